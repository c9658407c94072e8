package webhook

import (
	"encoding/json"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestBudgetValidator(t *testing.T) {
	for _, tt := range []struct {
		name string
		spec powerv1alpha1.GPUPowerBudgetSpec
		want string // "" admitted
	}{
		{"no selectors", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000}, ""},
		{"valid selectors", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}},
			Defaults:          []powerv1alpha1.DefaultLimit{{Watts: 300, PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: "Exists"}}}}}}, ""},
		{"unknown operator", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000,
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Bogus"}}}},
			`spec.namespaceSelector.matchExpressions[0].operator: Invalid value: "Bogus": not a valid selector operator`},
		{"In without values", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000,
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "In"}}}},
			`spec.namespaceSelector.matchExpressions[0].values: Required value`},
		{"bad label key in a default's podSelector", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000,
			Defaults: []powerv1alpha1.DefaultLimit{{Watts: 300, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"not a key!": "x"}}}}},
			`spec.defaults[0].podSelector.matchLabels: Invalid value: "not a key!"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw, err := json.Marshal(&powerv1alpha1.GPUPowerBudget{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Spec: tt.spec})
			if err != nil {
				t.Fatal(err)
			}
			resp := BudgetValidator{}.Handle(t.Context(), admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
				Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}}})
			switch {
			case tt.want == "" && !resp.Allowed:
				t.Errorf("denied: %s", resp.Result.Message)
			case tt.want != "" && (resp.Allowed || !strings.Contains(resp.Result.Message, tt.want)):
				t.Errorf("allowed %v, message %v; want a denial containing %q", resp.Allowed, resp.Result, tt.want)
			}
		})
	}
}

// Only admission of the pod itself may set the limit and the stamp: a write
// through pods/status or a Binding that would change them is denied.
func TestSubresourcesCannotChangePowerAnnotations(t *testing.T) {
	_, v, _ := newHandlers()
	stamped := testpod.MakePod("a", "llm").GPU(1).Limit("300").Stamp("300").Obj()
	raised := testpod.MakePod("a", "llm").GPU(1).Limit("700").Stamp("700").Obj()
	bare := testpod.MakePod("a", "llm").GPU(1).Obj()
	floor := testpod.MakePod("a", "llm").GPU(1).Limit("150").Stamp("150").Obj()
	binding := func(annotations map[string]string) *corev1.Pod { // a Binding's metadata, read as a pod's
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "llm", Annotations: annotations}}
	}
	for _, tt := range []struct {
		name        string
		subresource string
		op          admissionv1.Operation
		obj, old    *corev1.Pod
		denied      []string
	}{
		{"status write that keeps the annotations", "status", admissionv1.Update, stamped, stamped, nil},
		{"status raises limit and stamp together", "status", admissionv1.Update, raised, stamped, []string{policy.AnnotationPowerLimit, policy.AnnotationPowerLimitValidated}},
		{"status writes a limit below the floor with its stamp", "status", admissionv1.Update, floor, bare, []string{policy.AnnotationPowerLimit, policy.AnnotationPowerLimitValidated}},
		{"status removes the stamp", "status", admissionv1.Update, testpod.MakePod("a", "llm").GPU(1).Limit("300").Obj(), stamped, []string{policy.AnnotationPowerLimitValidated}},
		{"status lowers the claims' GPU counts", "status", admissionv1.Update,
			testpod.MakePod("a", "llm").NamedClaim("gpus", "pool").Annotation(policy.AnnotationClaimGPUs, "gpus=1").Obj(),
			testpod.MakePod("a", "llm").NamedClaim("gpus", "pool").Annotation(policy.AnnotationClaimGPUs, "gpus=4").Obj(), []string{policy.AnnotationClaimGPUs}},
		{"binding without power annotations", "binding", admissionv1.Create, binding(map[string]string{"other": "x"}), nil, nil},
		{"binding that carries a stamp", "binding", admissionv1.Create, binding(map[string]string{policy.AnnotationPowerLimitValidated: "300"}), nil, []string{policy.AnnotationPowerLimitValidated}},
		{"binding that carries claims' GPU counts", "binding", admissionv1.Create, binding(map[string]string{policy.AnnotationClaimGPUs: "gpus=1",
			policy.AnnotationClaimGPUsSignature: "c.1.x"}), nil, []string{policy.AnnotationClaimGPUs, policy.AnnotationClaimGPUsSignature}},
		{"another subresource", "ephemeralcontainers", admissionv1.Update, raised, stamped, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := request(t, tt.op, tt.obj, tt.old)
			req.SubResource = tt.subresource
			resp := v.Handle(t.Context(), req)
			if len(tt.denied) == 0 {
				if !resp.Allowed {
					t.Fatalf("denied: %s", resp.Result.Message)
				}
				return
			}
			if resp.Allowed || resp.Result.Code != 422 || len(resp.Result.Details.Causes) != len(tt.denied) {
				t.Fatalf("allowed %v, result %+v; want 422 with %d causes", resp.Allowed, resp.Result, len(tt.denied))
			}
			for i, key := range tt.denied {
				if c := resp.Result.Details.Causes[i]; c.Field != "metadata.annotations["+key+"]" || !strings.Contains(c.Message, "through pods/"+tt.subresource) {
					t.Errorf("cause %d: %+v; want %s named, through pods/%s", i, c, key, tt.subresource)
				}
			}
		})
	}
}

// The top-level bindings resource runs the same binding code as
// pods/binding: a Binding created there is a pod write too.
func TestTopLevelBindingCannotSetPowerAnnotations(t *testing.T) {
	_, v, _ := newHandlers()
	b := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "llm", Annotations: map[string]string{
		policy.AnnotationPowerLimit: "150", policy.AnnotationPowerLimitValidated: "150"}}}
	req := request(t, admissionv1.Create, b, nil)
	req.Kind = metav1.GroupVersionKind{Version: "v1", Kind: "Binding"}
	req.Resource = metav1.GroupVersionResource{Version: "v1", Resource: "bindings"}
	resp := v.Handle(t.Context(), req)
	if resp.Allowed || len(resp.Result.Details.Causes) != 2 || !strings.Contains(resp.Result.Details.Causes[0].Message, "through bindings;") {
		t.Fatalf("allowed %v, result %+v; want both annotations denied, through bindings", resp.Allowed, resp.Result)
	}
}
