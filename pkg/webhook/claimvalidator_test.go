package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A pod uses a claim through any entry that names it, counted at the most
// of them; a finished pod uses none; a stamped limit makes it limited.
func TestClaimUser(t *testing.T) {
	twice := testpod.MakePod("a", "llm").NamedClaim("x", "pool").NamedClaim("y", "pool").NamedClaim("z", "other").
		Limit("300").Stamp("300").Annotation(policy.AnnotationClaimGPUs, "x=1,y=3,z=8").Obj()
	if u, ok := claimUser(twice, "pool"); !ok || u.GPUs != 3 || !u.Limited || u.Pod != "llm/a" {
		t.Errorf("claimUser = %+v, %v; want llm/a limited at 3 GPUs", u, ok)
	}
	if _, ok := claimUser(twice, "unnamed"); ok {
		t.Error("a pod that does not name the claim uses it")
	}
	unlimited := testpod.MakePod("b", "llm").NamedClaim("x", "pool").Obj()
	if u, ok := claimUser(unlimited, "pool"); !ok || u.GPUs != 0 || u.Limited {
		t.Errorf("claimUser = %+v, %v; want counted none, no limit", u, ok)
	}
	done := twice.DeepCopy()
	done.Status.Phase = corev1.PodSucceeded
	if _, ok := claimUser(done, "pool"); ok {
		t.Error("a finished pod uses the claim")
	}
}
