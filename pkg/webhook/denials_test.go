package webhook

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TestDenialsByReason: each kind of denial is counted under its reason,
// what the dashboard's denials panel splits by.
func TestDenialsByReason(t *testing.T) {
	const h100 = "NVIDIA-H100-80GB-HBM3"
	m, v, _ := newHandlers()
	metrics := NewMetrics(prometheus.NewRegistry())
	m.Metrics, v.Metrics = metrics, metrics
	status := request(t, admissionv1.Update, testpod.MakePod("a", "llm").GPU(1).Limit("300").Stamp("300").Obj(),
		testpod.MakePod("a", "llm").GPU(1).Limit("300").Stamp("250").Obj())
	status.SubResource = "status"
	for _, tc := range []struct {
		name, webhook, reason string
		handle                func() bool
	}{
		{"a limit over the board's maximum", "mutate", "limit", func() bool {
			return m.Handle(t.Context(), request(t, admissionv1.Create, testpod.MakePod("a", "llm").GPU(1).Product(h100).Limit("900").Obj(), nil)).Allowed
		}},
		{"more GPUs than any node holds", "mutate", "gpu-count", func() bool {
			return m.Handle(t.Context(), request(t, admissionv1.Create, testpod.MakePod("a", "llm").GPU(policy.DefaultMaxGPUsPerPod+1).Product(h100).Limit("300").Obj(), nil)).Allowed
		}},
		{"a stamp another limit's", "validate", "stamp", func() bool {
			return v.Handle(t.Context(), request(t, admissionv1.Create, testpod.MakePod("a", "llm").GPU(1).Product(h100).Limit("300").Stamp("250").Obj(), nil)).Allowed
		}},
		{"a stamp changed through pods/status", "validate", "write-path", func() bool {
			return v.Handle(t.Context(), status).Allowed
		}},
	} {
		before := testutil.ToFloat64(metrics.denials.WithLabelValues(tc.webhook, tc.reason))
		if tc.handle() {
			t.Errorf("%s: admitted", tc.name)
			continue
		}
		if got := testutil.ToFloat64(metrics.denials.WithLabelValues(tc.webhook, tc.reason)) - before; got != 1 {
			t.Errorf("%s: %s/%s denials grew by %v; want 1", tc.name, tc.webhook, tc.reason, got)
		}
	}
	if n := testutil.CollectAndCount(metrics.denials); n != 2*len(denialReasons) {
		t.Errorf("%d denial series; want every webhook x reason from the start (%d)", n, 2*len(denialReasons))
	}
}
