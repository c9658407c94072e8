package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
)

// FuzzAdmissionReview posts forged AdmissionReview bodies to both handlers,
// as a caller that is not the API server could: duplicate keys, huge
// quantities, deep nesting, truncated JSON. Each gets an answer, never a
// panic, and the answer stays small whatever the body holds (denials quote
// at most a bounded part of a value).
func FuzzAdmissionReview(f *testing.F) {
	review := func(op admissionv1.Operation, sub string, obj string) []byte {
		var old json.RawMessage
		if op == admissionv1.Update {
			old = json.RawMessage(obj)
		}
		b, _ := json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": map[string]any{
			"uid": "1", "kind": map[string]string{"version": "v1", "kind": "Pod"}, "operation": op, "subResource": sub,
			"namespace": "llm", "object": json.RawMessage(obj), "oldObject": old,
		}})
		return b
	}
	pod, _ := json.Marshal(testpod.MakePod("a", "llm").GPU(8).Env(4).Limit("250").Stamp("250").Obj())
	f.Add(review(admissionv1.Create, "", string(pod)))
	f.Add(review(admissionv1.Update, "status", string(pod)))
	f.Add(review(admissionv1.Create, "binding", `{"metadata":{"annotations":{"dynamo.nvidia.com/gpu-power-limit-validated":"1"}},"target":{"name":"n"}}`))
	f.Add(review(admissionv1.Create, "", `{"metadata":{"annotations":{"dynamo.nvidia.com/gpu-power-limit":"250"}},"metadata":{"annotations":{}},"spec":{"containers":[{"resources":{"limits":{"nvidia.com/gpu":"8"}}}]}}`))
	f.Add(review(admissionv1.Create, "", `{"spec":{"containers":[{"resources":{"limits":{"nvidia.com/gpu":"`+strings.Repeat("9", 10000)+`"}}}]}}`))
	f.Add(review(admissionv1.Create, "", `{"spec":{"containers":[{"resources":{"limits":{"nvidia.com/gpu":"20e15"}}}]},"metadata":{"annotations":{"dynamo.nvidia.com/gpu-power-limit":"250"}}}`))
	f.Add(review(admissionv1.Create, "", `{"spec":{"x":`+strings.Repeat("[", 3000)+strings.Repeat("]", 3000)+`}}`))
	f.Add([]byte(`{"request":{"object":` + strings.Repeat(`{"a":`, 3000)))
	m, v, _ := newHandlers()
	handlers := []http.Handler{NewReview(m), NewReview(v)}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, h := range handlers {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodPost, ValidatePath, bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				t.Fatalf("HTTP %d; an AdmissionReview always gets a 200 with its verdict", rec.Code)
			}
			if n := rec.Body.Len(); n > 16<<10+len(body)/64 {
				t.Fatalf("a %d-byte body got a %d-byte answer", len(body), n)
			}
		}
	})
}
