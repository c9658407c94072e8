package envtestenv

import (
	"os"
	"path/filepath"
	"testing"
)

// The version bin/k8s is named by is hack/go.mod's, the module the
// binaries are built from.
func TestK8sVersionIsHackGoMods(t *testing.T) {
	v, err := K8sVersion()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(Root(), "hack", "go.mod")); err != nil || v == "" || v[0] < '1' || v[0] > '9' {
		t.Fatalf("K8sVersion = %q (%v); want hack/go.mod's k8s.io/kubernetes version without its v", v, err)
	}
}
