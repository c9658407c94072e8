package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNewAdmissionFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.csv")
	if err := os.WriteFile(good, []byte("gpu_product,min_w,default_w,max_w\nACME-X1,100,200,300\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.csv")
	if err := os.WriteFile(bad, []byte("gpu_product,min_w,default_w,max_w\nACME-X1,300,200,100\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	a, err := newAdmission(options{catalogFile: good, unknown: "warn", timeSliced: "deny", maxGPUs: 256})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.Catalog["ACME-X1"]; !ok {
		t.Error("--catalog-file rows were not added")
	}
	if _, ok := a.Catalog["NVIDIA-H100-80GB-HBM3"]; !ok {
		t.Error("--catalog-file replaced the built-in catalog instead of adding to it")
	}

	for _, tt := range []struct {
		name string
		o    options
		want string
	}{
		{"bad catalog", options{catalogFile: bad, unknown: "deny"}, "catalog " + bad + ": line 2: ACME-X1: want 0 < min <= default <= max"},
		{"missing catalog", options{catalogFile: filepath.Join(dir, "nope.csv"), unknown: "deny"}, "open catalog"},
		{"unknown-products typo", options{unknown: "allow"}, `--unknown-products="allow": want "deny" or "warn"`},
		{"time-sliced-gpus typo", options{unknown: "deny", timeSliced: "lowest"}, `--time-sliced-gpus="lowest": want "deny" or "lowest-wins"`},
		{"no GPUs per pod", options{unknown: "deny", timeSliced: "deny"}, `--max-gpus-per-pod=0: want at least 1`},
	} {
		if _, err := newAdmission(tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v; want it to contain %q", tt.name, err, tt.want)
		}
	}
}

func TestDefaultRuleFlag(t *testing.T) {
	var d defaultRules
	if err := d.Set("role=decode=250"); err != nil {
		t.Fatal(err)
	}
	if err := d.Set("role=decode"); err == nil {
		t.Error("a rule without watts was accepted")
	}
	if len(d) != 1 || d[0].Watts != 250 {
		t.Errorf("rules = %+v", d)
	}
}
