package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const gpuA = "GPU-04efd212-9e79-ab41-d439-40c9b52a0202"

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
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state dir holds %d files; want only the ledger (no temp files left)", len(entries))
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
