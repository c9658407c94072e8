package envtestenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The version bin/k8s is named by is hack/go.mod's k8s.io/kubernetes
// requirement, the module the binaries are built from.
func TestK8sVersionIsHackGoMods(t *testing.T) {
	v, err := K8sVersion()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(Root(), "hack", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if v == "" || !strings.Contains(string(mod), "\tk8s.io/kubernetes v"+v+"\n") {
		t.Fatalf("K8sVersion = %q; hack/go.mod requires no k8s.io/kubernetes v%s", v, v)
	}
}
