package webhook

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// apiReviewDecoder decodes AdmissionReviews as controller-runtime's webhook
// server does: the oracle decodeReview must agree with.
var apiReviewDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	if err := admissionv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(scheme).UniversalDeserializer()
}()

func reviewBody(t testing.TB, req admissionv1.AdmissionRequest) []byte {
	t.Helper()
	b, err := json.Marshal(admissionv1.AdmissionReview{Request: &req})
	if err != nil {
		t.Fatal(err)
	}
	// encoding/json leaves TypeMeta out when empty; the API server sets it.
	return append([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",`), b[1:]...)
}

func FuzzDecodeReview(f *testing.F) {
	pod, _ := json.Marshal(testpod.MakePod("a", "llm").UID("u").GPU(8).Env(2).Limit("250").Obj())
	dry := true
	f.Add(reviewBody(f, admissionv1.AdmissionRequest{UID: "1", Operation: admissionv1.Create, Namespace: "llm", Name: "a",
		Object: runtime.RawExtension{Raw: pod}}))
	f.Add(reviewBody(f, admissionv1.AdmissionRequest{UID: "2", Operation: admissionv1.Update, SubResource: "status", DryRun: &dry,
		Object: runtime.RawExtension{Raw: pod}, OldObject: runtime.RawExtension{Raw: pod}, Options: runtime.RawExtension{Raw: []byte(`{"kind":"UpdateOptions"}`)}}))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"3","object" : {"a":[1, 2]} ,"oldObject":null}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"4"}}`))
	f.Add([]byte(`{"kind":"AdmissionReview","request":{"uid":"5","UID":"6","object":{}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"kind":{"group":"a"},"object":{"x":1},"requestKind":null,` +
		`"userInfo":{"username":"u","groups":["a",null],"extra":{"k":["v"],"n":null}},"dryRun":false},` +
		`"request":{"kind":{"version":"v1"},"object":null,"requestResource":{"resource":"pods"},"userInfo":{"groups":[],"extra":{"j":[]}},"dryRun":null}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := decodeReview(body)
		if err != nil {
			return
		}
		// Whatever decodes must agree with controller-runtime's decoder on
		// the I-JSON the API server sends.
		if !jsontext.Value(body).IsValid() {
			return
		}
		// As controller-runtime decodes: into a request it holds, so that a
		// later "request": null leaves what was read.
		var want admissionv1.AdmissionRequest
		review := admissionv1.AdmissionReview{Request: &want}
		if _, _, err := apiReviewDecoder.Decode(body, nil, &review); err != nil {
			t.Fatalf("decodeReview read %q, the API machinery refuses it: %v", body, err)
		}
		for _, raw := range []*runtime.RawExtension{&want.Object, &want.OldObject, &want.Options} {
			raw.Object = nil // the codec may decode what it recognises; only the bytes are compared
		}
		if !equality.Semantic.DeepEqual(&got.AdmissionRequest, &want) {
			t.Fatalf("decodeReview and the API machinery disagree on %q:\n got %+v\nwant %+v", body, got.AdmissionRequest, want)
		}
	})
}

// TestReviewRefuses covers what the review server answers 400 without
// calling the handler, in the form controller-runtime's server answers it.
func TestReviewRefuses(t *testing.T) {
	m, _, _ := newHandlers()
	h := NewReview(m)
	cases := []struct {
		name, contentType, body, want string
	}{
		{"empty", "application/json", "", "request body is empty"},
		{"not JSON content", "text/plain", `{}`, "expected application/json"},
		{"another version", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"1"}}`, "only admission.k8s.io/v1 AdmissionReview is served"},
		{"no request", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, "no request"},
		{"truncated", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":{"a":`, "admission review"},
		{"trailing data", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}} {}`, "trailing data"},
		{"too large", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"object":"` + strings.Repeat("a", maxReviewBytes) + `"}}`, "too large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, length := range []string{"known", "unknown"} {
				r := httptest.NewRequest(http.MethodPost, MutatePath, strings.NewReader(tc.body))
				if length == "unknown" {
					r.ContentLength = -1
				}
				if tc.body == "" {
					r.Body = http.NoBody
				}
				r.Header.Set("Content-Type", tc.contentType)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				var review admissionv1.AdmissionReview
				if err := json.Unmarshal(w.Body.Bytes(), &review); err != nil || review.Response == nil {
					t.Fatalf("%s length: answer %q: %v", length, w.Body, err)
				}
				res := review.Response
				if w.Code != http.StatusOK || res.Allowed || res.Result == nil || res.Result.Code != http.StatusBadRequest || !strings.Contains(res.Result.Message, tc.want) {
					t.Errorf("%s length: HTTP %d, %+v; want a 400 verdict saying %q", length, w.Code, res.Result, tc.want)
				}
			}
		})
	}
}

// TestReviewAnswersAsTheAPIServerExpects admits a pod through the review
// server and reads the answer as the API server does.
func TestReviewAnswersAsTheAPIServerExpects(t *testing.T) {
	m, _, _ := newHandlers()
	pod, _ := json.Marshal(testpod.MakePod("a", "llm").UID("u").GPU(1).Product("NVIDIA-H100-80GB-HBM3").Limit("300").Obj())
	body := reviewBody(t, admissionv1.AdmissionRequest{UID: "req-1", Operation: admissionv1.Create, Namespace: "llm", Name: "a",
		Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Object: runtime.RawExtension{Raw: pod}})
	r := httptest.NewRequest(http.MethodPost, MutatePath, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	NewReview(m).ServeHTTP(w, r)
	var review admissionv1.AdmissionReview
	if _, _, err := apiReviewDecoder.Decode(w.Body.Bytes(), nil, &review); err != nil {
		t.Fatalf("answer %q: %v", w.Body, err)
	}
	res := review.Response
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" || res == nil || res.UID != "req-1" || !res.Allowed ||
		res.PatchType == nil || *res.PatchType != admissionv1.PatchTypeJSONPatch || !bytes.Contains(res.Patch, []byte("gpu-power-limit-validated")) {
		t.Errorf("answer %s", w.Body)
	}
}

// TestReviewAllocatesWhatArrives sends what a hostile caller could: a body
// that declares the largest length allowed and sends a few bytes. The
// buffer is sized by what arrives, not by the claim, so forty such
// connections cannot hold 280 MiB of a replica's memory.
func TestReviewAllocatesWhatArrives(t *testing.T) {
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"1"}}`
	r := httptest.NewRequest(http.MethodPost, MutatePath, strings.NewReader(body))
	r.ContentLength = maxReviewBytes
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	got, err := readBody(r, new(bytes.Buffer))
	goruntime.ReadMemStats(&after)
	if err != nil || string(got) != body {
		t.Fatalf("readBody = %q, %v", got, err)
	}
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > 2*preallocated {
		t.Errorf("a %d-byte body declared as %d bytes allocated %d bytes; want at most %d", len(body), maxReviewBytes, allocated, 2*preallocated)
	}
}

// TestReviewGivesASlowBodyItsDeadline: a caller that declares a body and
// sends it a byte at a time (holding a connection, and a buffer, open) is
// answered with an error once the body's deadline passes, on a real server.
func TestReviewGivesASlowBodyItsDeadline(t *testing.T) {
	defer func(d time.Duration) { bodyTimeout = d }(bodyTimeout)
	bodyTimeout = 200 * time.Millisecond
	m, _, _ := newHandlers()
	srv := httptest.NewServer(NewReview(m))
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"apiVersion\":", MutatePath); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to a body that never comes: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var review admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&review); err != nil || review.Response == nil || review.Response.Allowed ||
		review.Response.Result == nil || !strings.Contains(review.Response.Result.Message, "read body") {
		t.Errorf("answer %+v (%v); want a 400 verdict that the body could not be read", review.Response, err)
	}
}

// keepingHandler keeps what a handler may keep of each review: the pod
// decoded from it and the request's strings.
type keepingHandler struct {
	pods []*corev1.Pod
	uids []string
}

func (h *keepingHandler) Handle(_ context.Context, req admission.Request) admission.Response {
	pod, err := decodePod(req.Object.Raw)
	if err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	h.pods, h.uids = append(h.pods, pod), append(h.uids, string(req.UID))
	return admission.Allowed("")
}

// TestPooledBodiesAreNotKept: review bodies are read into pooled buffers
// that later reviews overwrite, so what a handler keeps must be a copy. Two
// hundred pods are decoded and kept, two hundred other reviews then go
// through the same buffers, and every kept pod and uid is still its own.
func TestPooledBodiesAreNotKept(t *testing.T) {
	h := &keepingHandler{}
	serve := NewReview(h)
	send := func(i int, name string) {
		pod := testpod.MakePod(name, "llm").GPU(1).Limit(fmt.Sprint(300+i)).Label("app", name).Obj()
		raw, _ := json.Marshal(pod)
		body, _ := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{UID: types.UID(fmt.Sprintf("uid-%s", name)), Operation: admissionv1.Create,
				Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Namespace: "llm", Name: name, Object: runtime.RawExtension{Raw: raw}},
		})
		r := httptest.NewRequest(http.MethodPost, MutatePath, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		serve.ServeHTTP(w, r)
		if !strings.Contains(w.Body.String(), `"allowed":true`) {
			t.Fatalf("review %s: %s", name, w.Body)
		}
	}
	const n = 200
	for i := range n {
		send(i, fmt.Sprintf("kept-%03d", i))
	}
	for i := range n {
		send(i, fmt.Sprintf("xxxx-%03d", n-i))
	}
	for i := range n {
		name, pod := fmt.Sprintf("kept-%03d", i), h.pods[i]
		if pod.Name != name || pod.Labels["app"] != name || pod.Annotations[policy.AnnotationPowerLimit] != fmt.Sprint(300+i) || h.uids[i] != "uid-"+name {
			t.Fatalf("review %d kept pod %s (app=%s, limit %s) and uid %s: a later review's body overwrote it",
				i, pod.Name, pod.Labels["app"], pod.Annotations[policy.AnnotationPowerLimit], h.uids[i])
		}
	}
}
