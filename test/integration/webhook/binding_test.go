package webhook_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// The top-level "bindings" resource (POST /api/v1/namespaces/{ns}/bindings,
// what client.Create(&corev1.Binding{}) sends) runs the same code as
// pods/binding and merges the Binding's annotations into the pod, with no
// subresource in the request. Anyone allowed to bind (a secondary
// scheduler's service account) must not forge limit = stamp through it.
func TestTopLevelBindingsCannotForgeAStamp(t *testing.T) {
	p := pod("legacy-bind").GPU(1).Obj() // unbound: no scheduler runs here
	if err := create(t, k8s, p); err != nil {
		t.Fatalf("create: %v", err)
	}
	forged := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: testNamespace, Annotations: map[string]string{
			policy.AnnotationPowerLimit: "150", policy.AnnotationPowerLimitValidated: "150"}},
		Target: corev1.ObjectReference{Kind: "Node", Name: "h100-0"},
	}
	err := k8s.Create(t.Context(), forged) // POST .../namespaces/llm/bindings
	var got corev1.Pod
	if gerr := k8s.Get(t.Context(), types.NamespacedName{Namespace: testNamespace, Name: p.Name}, &got); gerr != nil {
		t.Fatal(gerr)
	}
	if err == nil || got.Annotations[policy.AnnotationPowerLimitValidated] != "" {
		t.Errorf("legacy bindings: err %v; pod now on node %q with %s; want the Binding denied and no stamp (150 W is below the H100's 200 W floor)",
			err, got.Spec.NodeName, powerAnnotations(got.Annotations))
	}
}
