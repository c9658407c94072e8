package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-logr/logr"
)

// LockFile is the lock inside the state directory that one agent at a time
// holds, for as long as it runs.
const LockFile = "lock"

// lockPoll is how often a waiting agent tries the lock again.
const lockPoll = 500 * time.Millisecond

// LockStateDir takes the state directory's lock, waiting while another agent
// on the node holds it (a predecessor still shutting down in a rolling
// update, a force-deleted agent pod whose container still runs): two agents
// writing one ledger would each take the other's caps for an
// administrator's, or restore what the other just set. It waits until ctx is
// done (the caller bounds it), then fails naming the directory. The lock is
// the kernel's (flock) and goes with the process, however it ends; release
// gives it back sooner.
func LockStateDir(ctx context.Context, log logr.Logger, dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, LockFile)
	// Lstat first: a device node there is never opened.
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() {
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil, fmt.Errorf("lock state dir: %s is a symlink; refusing it", path)
		}
		return nil, fmt.Errorf("lock state dir %s: not a regular file (mode %s); refusing it", path, fi.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("lock state dir: %s is a symlink; refusing it", path)
	}
	if err != nil {
		return nil, fmt.Errorf("lock state dir: %w", err)
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		_ = f.Close()
		if err == nil {
			err = fmt.Errorf("not a regular file (mode %s); refusing it", fi.Mode())
		}
		return nil, fmt.Errorf("lock state dir %s: %w", path, err)
	}
	tick := time.NewTicker(lockPoll)
	defer tick.Stop()
	for waited := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if waited {
				log.Info("Took the state directory's lock", "path", path)
			}
			return func() { _ = f.Close() }, nil // closing the last descriptor releases the lock
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			_ = f.Close()
			return nil, fmt.Errorf("lock state dir %s: %w", path, err)
		}
		if !waited {
			log.Info("Waiting for another power agent on this node to release the state directory", "path", path)
			waited = true
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock state dir %s: another power agent on this node still holds it: %w", path, context.Cause(ctx))
		case <-tick.C:
		}
	}
}
