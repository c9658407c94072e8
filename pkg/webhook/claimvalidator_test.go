package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A pod uses a claim through any entry that names it, the claim its status
// records, or, as the claim's controller owner, the entry the claim names
// (any entry when it names none), counted at the most of them; a finished
// pod uses none; a stamped limit makes it limited.
func TestClaimUser(t *testing.T) {
	pool := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "pool"}}
	twice := testpod.MakePod("a", "llm").NamedClaim("x", "pool").NamedClaim("y", "pool").NamedClaim("z", "other").
		Limit("300").Stamp("300").Annotation(policy.AnnotationClaimGPUs, "x=1,y=3,z=8").Obj()
	if u, ok := claimUser(twice, pool, false); !ok || u.GPUs != 3 || !u.Limited || u.Pod != "llm/a" {
		t.Errorf("claimUser = %+v, %v; want llm/a limited at 3 GPUs", u, ok)
	}
	unnamed := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "unnamed"}}
	if _, ok := claimUser(twice, unnamed, false); ok {
		t.Error("a pod that does not name the claim uses it")
	}
	if u, ok := claimUser(twice, unnamed, true); !ok || u.GPUs != 8 {
		t.Errorf("the claim's controller owner, no entry named: %+v, %v; want held to its largest count, 8", u, ok)
	}
	made := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "made", Annotations: map[string]string{podClaimAnnotation: "gpus"}}}
	templated := testpod.MakePod("t", "llm").ResourceClaim("gpus", "one").ResourceClaim("more", "four").
		Annotation(policy.AnnotationClaimGPUs, "gpus=1,more=4").Obj()
	if u, ok := claimUser(templated, made, true); !ok || u.GPUs != 1 {
		t.Errorf("the claim's controller owner, entry named: %+v, %v; want held to that entry's 1", u, ok)
	}
	templated.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "more", ResourceClaimName: ptr.To("made")}}
	if u, ok := claimUser(templated, made, false); !ok || u.GPUs != 4 {
		t.Errorf("the claim its status records for an entry: %+v, %v; want held to that entry's 4", u, ok)
	}
	extended := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "ext", Annotations: map[string]string{extendedResourceClaimAnnotation: "true"}}}
	plain := testpod.MakePod("p", "llm").GPU(2).Obj()
	if u, ok := claimUser(plain, extended, true); !ok || u.GPUs != 2 {
		t.Errorf("the scheduler's extended-resource claim: %+v, %v; want held to the pod's 2 GPUs", u, ok)
	}
	unlimited := testpod.MakePod("b", "llm").NamedClaim("x", "pool").Obj()
	if u, ok := claimUser(unlimited, pool, false); !ok || u.GPUs != 0 || u.Limited {
		t.Errorf("claimUser = %+v, %v; want counted none, no limit", u, ok)
	}
	done := twice.DeepCopy()
	done.Status.Phase = corev1.PodSucceeded
	if _, ok := claimUser(done, pool, false); ok {
		t.Error("a finished pod uses the claim")
	}
}
