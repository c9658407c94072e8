package manifests_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/prometheustest"
)

// TestControllerToolsVersionIsTheMakefiles: the monitoring tests generate
// the Prometheus Operator's CRDs with the controller-gen that `make
// manifests` uses; the two versions cannot drift apart.
func TestControllerToolsVersionIsTheMakefiles(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(envtestenv.Root(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CONTROLLER_TOOLS_VERSION\s*\?=\s*(\S+)`).FindSubmatch(mk)
	if m == nil || string(m[1]) != prometheustest.ControllerToolsVersion {
		t.Errorf("Makefile's CONTROLLER_TOOLS_VERSION %q, prometheustest.ControllerToolsVersion %q: keep them equal", m, prometheustest.ControllerToolsVersion)
	}
}
