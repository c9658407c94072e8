package webhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// What a pod's claims ask, from what a tenant can write: claim specs,
// missing templates, claims that name nothing, more claims than the API
// allows, an API server that fails.
func TestClaimResolver(t *testing.T) {
	twoGPUs := &resourcev1.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: "two", Namespace: "llm"},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{
			{Name: "gpu", Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: policy.DeviceClassGPU, Count: 2}},
			{Name: "alt", FirstAvailable: []resourcev1.DeviceSubRequest{{Name: "big", DeviceClassName: policy.DeviceClassGPU, Count: 4}}},
			{Name: "empty"}, // neither exactly nor firstAvailable: the API refuses it; it must not panic here
		}}}}}
	shared := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: "llm"},
		Spec: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{
			{Name: "mon", Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: policy.DeviceClassGPU, AdminAccess: ptr.To(true)}},
		}}}}
	api := fake.NewClientBuilder().WithScheme(clientgoscheme.Scheme).WithObjects(twoGPUs, shared).Build()
	r := &ClaimResolver{API: api}
	pod := func(claims ...corev1.PodResourceClaim) *corev1.Pod {
		p := testpod.MakePod("a", "llm").Obj()
		p.Spec.ResourceClaims = claims
		return p
	}
	tmpl := func(name, template string) corev1.PodResourceClaim {
		return corev1.PodResourceClaim{Name: name, ResourceClaimTemplateName: ptr.To(template)}
	}
	for _, tt := range []struct {
		name    string
		pod     *corev1.Pod
		gpus    int64
		problem string
		admin   int
	}{
		{name: "a template's requests: 2, and firstAvailable's largest, 4; an empty request cannot be judged", pod: pod(tmpl("gpus", "two")), gpus: 6,
			problem: `claim "gpus" (ResourceClaimTemplate "two"), request "empty": DeviceClass "" matches no published device, so what it gets cannot be judged`},
		{name: "a named claim with admin access", pod: pod(corev1.PodResourceClaim{Name: "mon", ResourceClaimName: ptr.To("shared")}), admin: 1},
		{name: "a template that does not exist", pod: pod(tmpl("gpus", "nope")),
			problem: `claim "gpus" (ResourceClaimTemplate "nope"): not found in namespace "llm": create it before the pod`},
		{name: "a claim that names nothing", pod: pod(corev1.PodResourceClaim{Name: "void"}),
			problem: `claim "void": it names neither a ResourceClaim nor a template`},
		{name: "more claims than the API allows", pod: func() *corev1.Pod {
			var claims []corev1.PodResourceClaim
			for i := range maxPodClaims + 1 {
				claims = append(claims, tmpl(fmt.Sprintf("c%d", i), "two"))
			}
			return pod(claims...)
		}(), problem: "resourceClaims: 33 claims, more than the 32 a pod may have"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d, err := r.Demand(t.Context(), tt.pod)
			if err != nil {
				t.Fatal(err)
			}
			if d.GPUs != tt.gpus || strings.Join(d.Problems, "; ") != tt.problem || len(d.AdminAccess) != tt.admin || !d.Resolved {
				t.Errorf("Demand = %+v; want %d GPUs, problem %q, %d admin-access requests", d, tt.gpus, tt.problem, tt.admin)
			}
		})
	}

	// An API server that fails is an error (the admission is retried), never
	// a count of nothing.
	failing := &ClaimResolver{API: interceptor.NewClient(api, interceptor.Funcs{
		Get: func(context.Context, client.WithWatch, client.ObjectKey, client.Object, ...client.GetOption) error {
			return errors.New("etcdserver: request timed out")
		},
	})}
	if _, err := failing.Demand(t.Context(), pod(tmpl("gpus", "two"))); err == nil || !strings.Contains(err.Error(), "request timed out") {
		t.Errorf("Demand on a failing API server: %v; want its error", err)
	}
	// No resolver (no resource.k8s.io/v1): nothing resolved.
	var none *ClaimResolver
	if d, err := none.Demand(t.Context(), pod(tmpl("gpus", "two"))); err != nil || d.Resolved {
		t.Errorf("Demand without DRA = %+v, %v; want unresolved", d, err)
	}
}
