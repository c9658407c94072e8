package kube_test

import (
	"net/http"
	"testing"

	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube/kubetest"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// The slice cache keeps what podmap.DRAResolver reads, and nothing of other
// drivers' devices: a node's slices are written by its drivers and can be
// large.
func TestTrimSliceKeepsWhatTheResolverReads(t *testing.T) {
	str := func(s string) resourcev1.DeviceAttribute { return resourcev1.DeviceAttribute{StringValue: ptr.To(s)} }
	const uuid = "GPU-11111111-1111-1111-1111-111111111111"
	rs := &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: "s", ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: resourcev1.ResourceSliceSpec{Driver: policy.DriverGPU, Pool: resourcev1.ResourcePool{Name: "node-a", Generation: 4}, NodeName: ptr.To("node-a"),
			Devices: []resourcev1.Device{{Name: "gpu-0", Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
				"type": str("gpu"), "gpu.nvidia.com/uuid": str(uuid), "productName": str("NVIDIA H100 80GB HBM3"), "driverVersion": {VersionValue: ptr.To("580.0.0")},
			}}}}}
	out, err := kube.TrimSlice(rs)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*resourcev1.ResourceSlice)
	if got.ManagedFields != nil || len(got.Spec.Devices[0].Attributes) != 2 {
		t.Errorf("kept %+v; want the name, pool and the type and uuid attributes only", got)
	}
	if uuidOf, err := podmap.DRAResolver([]*resourcev1.ResourceSlice{got})("node-a", "gpu-0"); err != nil || uuidOf != uuid {
		t.Errorf("resolved from the trimmed slice: %q, %v; want %s", uuidOf, err, uuid)
	}
	other := rs.DeepCopy()
	other.Spec.Driver = "nic.example.com"
	if out, _ := kube.TrimSlice(other); len(out.(*resourcev1.ResourceSlice).Spec.Devices) != 0 {
		t.Error("another driver's devices were kept")
	}
}

// Whether the API server serves DRA is its answer to discovery: served,
// not served (the agent then watches no slices), or an error the agent
// stops on rather than guess (a guess of "served" would never sync, of "not
// served" would never see a DRA device).
func TestServesDRA(t *testing.T) {
	for _, tt := range []struct {
		code   int
		served bool
		err    bool
	}{{http.StatusOK, true, false}, {http.StatusNotFound, false, false}, {http.StatusInternalServerError, false, true}, {http.StatusForbidden, false, true}} {
		k, _ := kubetest.APIServer(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/apis/resource.k8s.io/v1" {
				t.Errorf("asked %s", r.URL.Path)
			}
			if tt.code == http.StatusOK {
				kubetest.WriteJSON(w, http.StatusOK, map[string]any{"kind": "APIResourceList", "groupVersion": "resource.k8s.io/v1"})
				return
			}
			kubetest.WriteStatus(w, tt.code)
		})
		served, err := k.ServesDRA(t.Context())
		if served != tt.served || (err != nil) != tt.err {
			t.Errorf("HTTP %d: ServesDRA = %v, %v; want %v, error %v", tt.code, served, err, tt.served, tt.err)
		}
	}
}
