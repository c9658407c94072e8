package agent

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	gpuA = "GPU-04efd212-9e79-ab41-d439-40c9b52a0202"
	gpuB = "GPU-04efd212-9e79-ab41-d439-40c9b52a0203"
)

func TestLedgerSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Put(gpuA, Ownership{Original: 700_000, Applied: 250_000}); err != nil {
		t.Fatal(err)
	}
	again, err := OpenLedger(dir)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := again.Get(gpuA); !ok || o.Original != 700_000 || o.Applied != 250_000 {
		t.Errorf("after restart: %+v, %v", o, ok)
	}
	if err := again.Forget(gpuA); err != nil {
		t.Fatal(err)
	}
	third, _ := OpenLedger(dir)
	if _, ok := third.Get(gpuA); ok {
		t.Error("a forgotten GPU came back")
	}
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{MarkerFile, LedgerFile}; !slices.Equal(names, want) {
		t.Errorf("state dir holds %v; want only %v (no temp files left)", names, want)
	}
}

func TestCorruptLedgerOwnsNothing(t *testing.T) {
	for name, content := range map[string]string{
		"not JSON":      "{garbage",
		"wrong version": `{"version": 7, "gpus": {}}`,
		"bad UUID":      `{"version": 1, "gpus": {"nope": {"originalMilliwatts": 700000}}}`,
		"negative":      `{"version": 1, "gpus": {"` + gpuA + `": {"originalMilliwatts": -1}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, LedgerFile), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			l, err := OpenLedger(dir)
			if err == nil || !strings.Contains(err.Error(), "is corrupt") {
				t.Fatalf("error %v; want a corrupt-ledger error", err)
			}
			if l == nil || len(l.Owned()) != 0 {
				t.Fatalf("a corrupt ledger must give an empty, usable ledger; got %v", l)
			}
			matches, _ := filepath.Glob(filepath.Join(dir, LedgerFile+".corrupt-*"))
			if len(matches) != 1 {
				t.Errorf("the corrupt ledger was not kept aside: %v", matches)
			}
			if err := l.Put(gpuA, Ownership{Original: 700_000, Applied: 300_000}); err != nil {
				t.Errorf("the agent cannot record new caps after a corrupt ledger: %v", err)
			}
		})
	}
}

func FuzzOpenLedger(f *testing.F) {
	f.Add([]byte(`{"version": 1, "gpus": {"` + gpuA + `": {"originalMilliwatts": 700000, "appliedMilliwatts": 250000}}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, LedgerFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := OpenLedger(dir)
		if l == nil {
			t.Fatalf("no ledger returned (err %v)", err)
		}
		for _, uuid := range l.Owned() {
			if o, _ := l.Get(uuid); !strings.HasPrefix(uuid, "GPU-") || o.Original < 0 || o.Applied < 0 {
				t.Fatalf("accepted an invalid entry %q: %+v", uuid, o)
			}
		}
	})
}

// TestLedgerRefusesWhatIsNotARegularFile: whatever sits at the ledger's path
// on the host, opening it neither blocks nor reads without bound; anything but
// a regular file of sane size is a corrupt ledger, moved aside, owning nothing.
func TestLedgerRefusesWhatIsNotARegularFile(t *testing.T) {
	tests := []struct {
		name    string
		make    func(t *testing.T, path string)
		wantErr string
	}{
		{"FIFO with no writer", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"symlink to a valid ledger", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "elsewhere.json")
			if err := os.WriteFile(target, []byte(`{"version": 1, "gpus": {}}`), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"symlink to /dev/zero", func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"character device like /dev/zero", func(t *testing.T, path string) {
			// /dev/zero is character device 1,5.
			if err := syscall.Mknod(path, syscall.S_IFCHR|0o600, 1<<8|5); err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("mknod: %v (CI runs as root: the device case must run there)", err)
				}
				t.Skipf("mknod needs root: %v", err)
			}
		}, "not a regular file"},
		{"file larger than any ledger", func(t *testing.T, path string) {
			big := `{"version": 1, "gpus": {}, "pad": "` + strings.Repeat("x", maxLedgerFile) + `"}`
			if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "larger than 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, LedgerFile)
			tt.make(t, path)
			done := make(chan struct{})
			var l *Ledger
			var err error
			go func() { l, err = OpenLedger(dir); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("OpenLedger blocked")
			}
			if !errors.Is(err, ErrCorruptLedger) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
				t.Fatalf("OpenLedger error %v; want a corrupt-ledger error with %q naming %s", err, tt.wantErr, path)
			}
			if l == nil || len(l.Owned()) != 0 || !l.Recovering() {
				t.Fatalf("a refused ledger must give an empty ledger in recovery; got %+v", l)
			}
			if matches, _ := filepath.Glob(path + ".corrupt-*"); len(matches) != 1 {
				t.Errorf("the refused ledger was not moved aside: %v", matches)
			}
			if err := l.Put(gpuA, Ownership{Original: 700_000, Applied: 300_000}); err != nil {
				t.Errorf("the agent cannot record caps after a refused ledger: %v", err)
			}
			if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("the new ledger is not a regular file: %v, %v", fi, err)
			}
		})
	}
}

func TestLedgerRecovery(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLedger(dir)
	if err != nil || l.Recovering() {
		t.Fatalf("a first install: %v, recovering %v; want no recovery", err, l.Recovering())
	}
	if _, err := os.Lstat(filepath.Join(dir, MarkerFile)); err != nil {
		t.Fatalf("the first start did not mark the state directory: %v", err)
	}
	// The ledger is lost; the marker stays.
	if err := l.Put(gpuA, Ownership{Original: 700_000, Applied: 300_000}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, LedgerFile)); err != nil {
		t.Fatal(err)
	}
	l, err = OpenLedger(dir)
	if err != nil || !l.Recovering() || !l.RecoveringGPU(gpuA) || !l.RecoveringGPU(gpuB) {
		t.Fatalf("a lost ledger: %v, recovering %v; want recovering", err, l.Recovering())
	}
	// A reconcile that could not read GPU B ends recovery for A alone, and
	// a restart goes on recovering B.
	if err := l.Settle([]string{gpuA}, []string{gpuA, gpuB}); err != nil || l.RecoveringGPU(gpuA) || !l.RecoveringGPU(gpuB) {
		t.Fatalf("Settle(A): %v, recovering A %v, B %v; want B alone", err, l.RecoveringGPU(gpuA), l.RecoveringGPU(gpuB))
	}
	l, err = OpenLedger(dir)
	if err != nil || l.RecoveringGPU(gpuA) || !l.RecoveringGPU(gpuB) {
		t.Fatalf("restarted mid-recovery: %v, recovering A %v, B %v; want B alone", err, l.RecoveringGPU(gpuA), l.RecoveringGPU(gpuB))
	}
	if err := l.Settle([]string{gpuB}, []string{gpuA, gpuB}); err != nil || l.Recovering() {
		t.Fatalf("Settle(B): %v, recovering %v", err, l.Recovering())
	}
	if _, err := os.Stat(filepath.Join(dir, LedgerFile)); err != nil {
		t.Errorf("Settle did not write the (empty) ledger: %v", err)
	}
	again, err := OpenLedger(dir)
	if err != nil || again.Recovering() {
		t.Errorf("the next agent finds a ledger and does not recover: %v, recovering %v", err, again.Recovering())
	}
}

// TestWipedStateDirIsAFirstInstall: with the marker gone too, nothing tells
// a wiped folder from a new node, and an unowned cap is an administrator's.
func TestWipedStateDirIsAFirstInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if _, err := OpenLedger(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLedger(dir)
	if err != nil || l.Recovering() {
		t.Errorf("a wiped state dir: %v, recovering %v; want a first install", err, l.Recovering())
	}
}
