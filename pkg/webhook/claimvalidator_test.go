package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

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

// What a caller can send the ResourceClaim webhook that is not a claim to
// judge: another operation passes, a body that is no claim is a 400, and a
// failure to read the pods it is for is an error (failurePolicy: Fail),
// never an admission.
func TestClaimValidatorHostileRequests(t *testing.T) {
	claim := func(owner *metav1.OwnerReference) []byte {
		c := gpuClaimFor("llm", "c", 8)
		if owner != nil {
			c.OwnerReferences = []metav1.OwnerReference{*owner}
		}
		raw, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	listFails := interceptor.Funcs{List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
		return errors.New("etcd is gone")
	}}
	getFails := interceptor.Funcs{Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
		return errors.New("etcd is gone")
	}}
	podOwner := &metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "p", UID: "uid-p", Controller: ptr.To(true)}
	for _, tc := range []struct {
		name  string
		op    admissionv1.Operation
		user  string
		raw   []byte
		funcs interceptor.Funcs
		code  int32 // 0: allowed
	}{
		{"a delete", admissionv1.Delete, "", []byte("not json"), interceptor.Funcs{}, 0},
		{"a body that is no claim", admissionv1.Create, "", []byte(`{"spec": 7}`), interceptor.Funcs{}, http.StatusBadRequest},
		{"truncated JSON", admissionv1.Create, "", claim(nil)[:20], interceptor.Funcs{}, http.StatusBadRequest},
		{"pods cannot be listed", admissionv1.Create, "alice", claim(nil), listFails, http.StatusInternalServerError},
		{"the owner pod cannot be read", admissionv1.Create, "system:kube-scheduler", claim(podOwner), getFails, http.StatusInternalServerError},
		{"a pod owner that does not exist", admissionv1.Create, "alice", claim(podOwner), interceptor.Funcs{}, http.StatusForbidden},
		{"a claim no pod uses", admissionv1.Create, "alice", claim(nil), interceptor.Funcs{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			api := fake.NewClientBuilder().WithInterceptorFuncs(tc.funcs).Build()
			v := &ClaimValidator{Claims: &ClaimResolver{API: api}, API: api}
			req := admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{Operation: tc.op, Namespace: "llm",
				UserInfo: authenticationv1.UserInfo{Username: tc.user}, Object: runtime.RawExtension{Raw: tc.raw}}}
			resp := v.Handle(t.Context(), req)
			switch {
			case tc.code == 0 && !resp.Allowed:
				t.Errorf("denied: %+v", resp.Result)
			case tc.code != 0 && (resp.Allowed || resp.Result == nil || resp.Result.Code != tc.code):
				t.Errorf("allowed %v, result %+v; want %d", resp.Allowed, resp.Result, tc.code)
			}
		})
	}
}

func gpuClaimFor(namespace, name string, gpus int64) *resourcev1.ResourceClaim {
	return &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Spec: resourcev1.ResourceClaimSpec{
		Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{{Name: "gpu",
			Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: policy.DeviceClassGPU, Count: gpus}}}}}}
}
