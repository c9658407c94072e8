package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
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

// BenchmarkServeHTTP is what one pod create costs the webhook process beyond
// TLS: both AdmissionReviews as the API server sends them, read, decoded,
// decided and answered, for the 25 kB worker pod of benchSetup and for the
// one-GPU pod of `make bench-admission` (pod=small). "server=review" is the
// webhook's own review server; "server=controller-runtime" the same handlers
// behind controller-runtime's, the baseline in the same run. Against
// BenchmarkMutate + BenchmarkValidate it shows what the HTTP and
// AdmissionReview layers add.
func BenchmarkServeHTTP(b *testing.B) {
	m, v, worker := benchSetup(b)
	small := request(b, admissionv1.Create, testpod.MakePod("llm-00001", "llm").GPU(1).Limit("500").Stamp("500").Label("app", "llm-worker").NodeName("gpu-node-0001").Obj(), nil)
	for _, pod := range []struct {
		name string
		req  admission.Request
	}{{"worker", worker}, {"small", small}} {
		body, err := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request:  &pod.req.AdmissionRequest,
		})
		if err != nil {
			b.Fatal(err)
		}
		for _, server := range []struct {
			name  string
			serve func(admission.Handler) http.Handler
		}{
			{"review", func(h admission.Handler) http.Handler { return NewReview(h) }},
			{"controller-runtime", func(h admission.Handler) http.Handler { return &webhook.Admission{Handler: h} }},
		} {
			b.Run("pod="+pod.name+"/server="+server.name, func(b *testing.B) {
				handlers := []http.Handler{server.serve(m), server.serve(v)}
				b.SetBytes(int64(2 * len(body)))
				b.ReportAllocs()
				for b.Loop() {
					for _, h := range handlers {
						r := httptest.NewRequestWithContext(b.Context(), http.MethodPost, "/", bytes.NewReader(body))
						r.Header.Set("Content-Type", "application/json")
						w := httptest.NewRecorder()
						h.ServeHTTP(w, r)
						if w.Code != http.StatusOK || !bytes.Contains(w.Body.Bytes(), []byte(`"allowed":true`)) {
							b.Fatalf("%d %s", w.Code, w.Body)
						}
					}
				}
			})
		}
	}
}
