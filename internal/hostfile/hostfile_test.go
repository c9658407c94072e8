package hostfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dynamo-power/gpu-power/internal/hostfile"
)

// TestRead: a regular file within the bound is read, also through a link;
// anything else at the path is refused at once, never waited on or read
// past the bound.
func TestRead(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 5), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{good, link} {
		if data, err := hostfile.Read(p, 4); err != nil || string(data) != "data" {
			t.Errorf("Read(%s) = %q, %v", p, data, err)
		}
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "not a regular file",
		fifo:                          "not a regular file",
		"/dev/zero":                   "not a regular file",
		big:                           "larger than 4 bytes",
	} {
		if _, err := hostfile.Read(path, 4); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Read(%s) = %v; want %q", path, err, want)
		}
	}
}
