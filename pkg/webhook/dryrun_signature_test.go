package webhook

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TestDryRunIsNotSigned: a tenant with create on pods gets the
// webhook's signature of any admissible (namespace, limit) from a dry-run
// create, which persists nothing and leaves no pod behind; the signature then
// verifies on any pod of the namespace (it binds nothing else) forever (the
// key never rotates).
func TestDryRunIsNotSigned(t *testing.T) {
	mutate, _, _ := newHandlers()
	mutate.Policy.StampKey = policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	pod := testpod.MakePod("probe", "llm").GPU(1).Limit("200").Obj()
	req := request(t, admissionv1.Create, pod, nil)
	yes := true
	req.DryRun = &yes
	resp := mutate.Handle(t.Context(), req)
	if sig := applyPatch(t, pod, resp)[policy.AnnotationPowerLimitSignature]; sig != "" {
		t.Errorf("dry-run create returned a usable signature %q for (llm, 200)", sig)
	}
}
