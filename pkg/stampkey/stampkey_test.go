package stampkey_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dynamo-power/gpu-power/pkg/stampkey"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "tls.key")
	if err := os.WriteFile(key, []byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB...\n-----END EC PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := stampkey.Load(key)
	if err != nil || len(a) == 0 {
		t.Fatalf("Load = %v, %v", a, err)
	}
	b, _ := stampkey.Load(key)
	if a.Sign("llm", "250") != b.Sign("llm", "250") {
		t.Error("the same file gave two keys")
	}
	if k, err := stampkey.Load(""); k != nil || err != nil {
		t.Errorf("no file: %v, %v; want no key", k, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "not a regular file",
		short:                         "too short",
		big:                           "larger than",
		fifo:                          "not a regular file",
	} {
		if _, err := stampkey.Load(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%s) = %v; want %q", path, err, want)
		}
	}
}
