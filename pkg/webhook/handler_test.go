package webhook

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nodeindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func newHandlers() (*Mutator, *Validator, *nodeindex.Index) {
	nodes := nodeindex.New()
	nodes.Set("h100-0", "NVIDIA-H100-80GB-HBM3")
	p := &policy.Admission{Catalog: policy.DefaultCatalog(), UnknownProducts: policy.UnknownProductsDeny}
	return &Mutator{Policy: p, Cluster: nodes}, &Validator{Policy: p, Cluster: nodes}, nodes
}

func request(t testing.TB, op admissionv1.Operation, pod, old *corev1.Pod) admission.Request {
	t.Helper()
	raw := func(p *corev1.Pod) runtime.RawExtension {
		if p == nil {
			return runtime.RawExtension{}
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return runtime.RawExtension{Raw: b}
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "req-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Operation: op,
		Namespace: pod.Namespace, Name: pod.Name, Object: raw(pod), OldObject: raw(old),
	}}
}

// applyPatch applies a response's patch to the pod, as the API server does.
func applyPatch(t *testing.T, pod *corev1.Pod, resp admission.Response) map[string]string {
	t.Helper()
	doc, _ := json.Marshal(pod)
	ops, _ := json.Marshal(resp.Patches)
	patch, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatal(err)
	}
	out, err := patch.Apply(doc)
	if err != nil {
		t.Fatalf("apply %s: %v", ops, err)
	}
	var patched corev1.Pod
	if err := json.Unmarshal(out, &patched); err != nil {
		t.Fatal(err)
	}
	return patched.Annotations
}

func TestMutatorPatches(t *testing.T) {
	mutate, _, _ := newHandlers()
	tests := []struct {
		name string
		op   admissionv1.Operation
		old  *corev1.Pod
		pod  *corev1.Pod
		want map[string]string
		nops int
	}{
		{"stamp added", admissionv1.Create, nil, testpod.MakePod("p", "ns").GPU(1).Limit("250").Annotation("team", "a").Obj(),
			map[string]string{policy.AnnotationPowerLimit: "250", policy.AnnotationPowerLimitValidated: "250", "team": "a"}, 1},
		{"forged stamp replaced", admissionv1.Create, nil, testpod.MakePod("p", "ns").GPU(1).Limit("250").Stamp("700").Obj(),
			map[string]string{policy.AnnotationPowerLimit: "250", policy.AnnotationPowerLimitValidated: "250"}, 1},
		{"stamp removed with the limit", admissionv1.Update, testpod.MakePod("p", "ns").GPU(1).Limit("250").Stamp("250").Obj(),
			testpod.MakePod("p", "ns").GPU(1).Stamp("250").Annotation("team", "a").Obj(), map[string]string{"team": "a"}, 1},
		{"nothing to do", admissionv1.Create, nil, testpod.MakePod("p", "ns").GPU(1).Obj(), nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := mutate.Handle(t.Context(), request(t, tt.op, tt.pod, tt.old))
			if !resp.Allowed {
				t.Fatalf("denied: %v", resp.Result)
			}
			if len(resp.Patches) != tt.nops {
				t.Fatalf("patch %v; want %d operations", resp.Patches, tt.nops)
			}
			got := applyPatch(t, tt.pod, resp)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("annotations after patch = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestDenialIsInvalidWithCauses(t *testing.T) {
	mutate, validate, _ := newHandlers()
	pod := testpod.MakePod("decode-0", "llm").GPU(1).Limit("900").Stamp("900").Obj()
	for name, h := range map[string]admission.Handler{"mutate": mutate, "validate": validate} {
		resp := h.Handle(t.Context(), request(t, admissionv1.Create, pod, nil))
		if resp.Allowed || resp.Result == nil {
			t.Fatalf("%s: admitted a 900 W limit on an H100", name)
		}
		r := resp.Result
		want := `Pod "decode-0" is invalid: metadata.annotations[dynamo.nvidia.com/gpu-power-limit]: Invalid value: "900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`
		if r.Code != http.StatusUnprocessableEntity || r.Reason != metav1.StatusReasonInvalid || r.Message != want {
			t.Errorf("%s: status %d %s %q; want 422 Invalid %q", name, r.Code, r.Reason, r.Message, want)
		}
		if r.Details == nil || len(r.Details.Causes) != 1 || r.Details.Causes[0].Field != "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]" {
			t.Errorf("%s: causes %+v; want one on the annotation", name, r.Details)
		}
	}
}

func TestUndecodableRequest(t *testing.T) {
	mutate, _, _ := newHandlers()
	req := request(t, admissionv1.Create, testpod.MakePod("p", "ns").Obj(), nil)
	req.Object.Raw = []byte(`{"metadata": 7}`)
	resp := mutate.Handle(t.Context(), req)
	if resp.Allowed || resp.Result.Code != http.StatusBadRequest {
		t.Errorf("undecodable pod: allowed %v, result %+v; want a 400 error", resp.Allowed, resp.Result)
	}
}
