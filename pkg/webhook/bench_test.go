package webhook

import (
	"encoding/json"
	"fmt"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// benchSetup makes a realistic worker pod (8 containers, 40 env vars each, 8
// GPUs, pinned to H100 by nodeSelector; 25 kB of JSON) in a cluster of 1,000
// GPU nodes. Handlers read the cluster only through the node index (map
// lookups), so the number of cached pods does not enter their cost.
func benchSetup(b *testing.B) (*Mutator, *Validator, admission.Request) {
	m, v, nodes := newHandlers()
	products := []string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H200", "NVIDIA-L40S", "NVIDIA-A100-SXM4-80GB"}
	for i := range 1000 {
		nodes.Set(fmt.Sprintf("gpu-node-%04d", i), products[i%len(products)])
	}
	w := testpod.MakePod("decode-worker-7", "llm").GPU(1)
	for i := 1; i < 8; i++ {
		w.Container(fmt.Sprintf("worker-%d", i), 1)
	}
	pod := w.Env(40).Label("app", "decode").Product("NVIDIA-H100-80GB-HBM3").Limit("450").Stamp("450").Obj()
	return m, v, request(b, admissionv1.Create, pod, nil)
}

func BenchmarkMutate(b *testing.B) {
	m, _, req := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		if resp := m.Handle(b.Context(), req); !resp.Allowed {
			b.Fatal(resp.Result.Message)
		}
	}
}

func BenchmarkValidate(b *testing.B) {
	_, v, req := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		if resp := v.Handle(b.Context(), req); !resp.Allowed {
			b.Fatal(resp.Result.Message)
		}
	}
}

// BenchmarkMutateUpdate is the planner's patch of a running pod's limit: both
// the new and the old pod are decoded.
func BenchmarkMutateUpdate(b *testing.B) {
	m, _, req := benchSetup(b)
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		b.Fatal(err)
	}
	req.Operation = admissionv1.Update
	req.OldObject = req.Object
	pod.Annotations[policy.AnnotationPowerLimit] = "300"
	req.Object.Raw, _ = json.Marshal(pod)
	b.ReportAllocs()
	for b.Loop() {
		if resp := m.Handle(b.Context(), req); !resp.Allowed || len(resp.Patches) != 1 {
			b.Fatal(resp.Result, resp.Patches)
		}
	}
}
