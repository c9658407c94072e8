package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
)

// TestStateDirLockAdmitsOneAgent: a second agent on the node waits for the
// first to let go, and gives up with a clear error when told to.
func TestStateDirLockAdmitsOneAgent(t *testing.T) {
	dir := t.TempDir()
	release, err := LockStateDir(t.Context(), testr.New(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := LockStateDir(ctx, testr.New(t), dir); err == nil || !strings.Contains(err.Error(), "another power agent on this node still holds it") {
		t.Fatalf("second agent while the first runs: %v; want it refused after its wait", err)
	}

	got := make(chan error, 1)
	go func() {
		again, err := LockStateDir(t.Context(), testr.New(t), dir)
		if err == nil {
			again()
		}
		got <- err
	}()
	time.Sleep(2 * lockPoll) // the successor is waiting
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("the successor did not get the lock once the first agent let go: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the successor still waits after the first agent let go")
	}
}

func TestStateDirLockRefusesASymlink(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/dev/null", filepath.Join(dir, LockFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LockStateDir(t.Context(), testr.New(t), dir); err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("lock through a symlink: %v; want it refused", err)
	}
}
