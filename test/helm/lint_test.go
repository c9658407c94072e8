package helm_test

import (
	"testing"

	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
)

// TestLint is `helm lint --strict` (no warning either) with the default
// values and with every toggle on, against the oldest Kubernetes the chart
// supports and the one this repository tests with (API deprecations). The
// one message allowed is the INFO that the chart has no icon.
func TestLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{"defaults": nil, "everything on": allOn(t)} {
		t.Run(name, func(t *testing.T) {
			for _, kube := range []string{"v1.30.0", "v1.37.2"} {
				kv, err := chartcommon.ParseKubeVersion(kube)
				if err != nil {
					t.Fatal(err)
				}
				for _, ns := range []string{shippedNamespace, "gpu-power"} {
					res := lint.RunAll(chartDir(t), vals, ns, lint.WithKubeVersion(kv))
					for _, m := range res.Messages {
						if m.Severity == support.InfoSev && m.Path == "Chart.yaml" && m.Err != nil && m.Err.Error() == "icon is recommended" {
							continue
						}
						t.Errorf("helm lint (Kubernetes %s, namespace %s): %s", kube, ns, m.Error())
					}
				}
			}
		})
	}
}
