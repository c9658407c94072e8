package podmap_test

import (
	"strings"
	"testing"

	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// draSlice is a slice of node-a's pool.
func draSlice(driver string, generation int64, devices ...resourcev1.Device) *resourcev1.ResourceSlice {
	return &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: "node-a-" + driver},
		Spec: resourcev1.ResourceSliceSpec{Driver: driver, Pool: resourcev1.ResourcePool{Name: "node-a", Generation: generation}, NodeName: ptr.To("node-a"), Devices: devices}}
}

func draDev(name string, attrs ...string) resourcev1.Device {
	d := resourcev1.Device{Name: name, Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{}}
	for i := 0; i+1 < len(attrs); i += 2 {
		d.Attributes[resourcev1.QualifiedName(attrs[i])] = resourcev1.DeviceAttribute{StringValue: ptr.To(attrs[i+1])}
	}
	return d
}

const (
	uuid0 = "GPU-11111111-1111-1111-1111-111111111111"
	uuid1 = "GPU-66666666-6666-6666-6666-666666666666"
)

func TestDRAResolver(t *testing.T) {
	resolve := podmap.DRAResolver([]*resourcev1.ResourceSlice{
		draSlice(policy.DriverGPU, 2,
			draDev("gpu-0", "type", "gpu", "uuid", uuid0),
			draDev("gpu-1", "gpu.nvidia.com/type", "gpu", "gpu.nvidia.com/uuid", uuid1),
			draDev("gpu-1-mig-1g.10gb-19-0", "type", "mig", "uuid", "MIG-22222222-2222-2222-2222-222222222222", "parentUUID", uuid1),
			draDev("gpu-vfio-0", "type", "vfio"),
			draDev("gpu-3", "type", "gpu", "uuid", "not-a-uuid")),
		// The older generation of the same pool no longer counts.
		func() *resourcev1.ResourceSlice {
			s := draSlice(policy.DriverGPU, 1, draDev("gpu-9", "type", "gpu", "uuid", uuid0))
			s.Name = "old"
			return s
		}(),
		draSlice("gpu.amd.com", 5, draDev("gpu-0", "type", "gpu", "uuid", uuid1)),
	})
	r := podmap.Resolver{DRADevice: resolve}
	dra := func(device string) podmap.DeviceRef {
		return podmap.DeviceRef{Kind: podmap.KindDRA, Pool: "node-a", Device: device, Part: true}
	}
	for _, tt := range []struct {
		device, want, err string
	}{
		{device: "gpu-0", want: uuid0},
		{device: "gpu-1", want: uuid1},
		{device: "gpu-1-mig-1g.10gb-19-0", err: "of type mig: not a whole GPU a power limit caps"},
		{device: "gpu-vfio-0", err: "of type vfio: not a whole GPU a power limit caps"},
		{device: "gpu-3", err: `lookup returned "not-a-uuid", not GPU-<uuid>`},
		{device: "gpu-9", err: `no ResourceSlice of gpu.nvidia.com on this node lists device "gpu-9"`},
	} {
		got, err := r.GPU(dra(tt.device))
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("GPU(%s) = %q, %v; want %s", tt.device, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("GPU(%s) = %q, %v; want an error containing %q", tt.device, got, err, tt.err)
		}
	}
}

// A MIG or vfio DRA device is left out of the holders, and freezes nothing:
// no pod's limit caps a board through it.
func TestBuildLeavesOutDevicesNotCapped(t *testing.T) {
	resolve := podmap.DRAResolver([]*resourcev1.ResourceSlice{draSlice(policy.DriverGPU, 1,
		draDev("gpu-0-mig-1g.10gb-19-0", "type", "mig", "parentUUID", uuid0), draDev("gpu-vfio-1", "type", "vfio"))})
	res := podmap.Build(podmap.Sources{
		Pods: []podmap.PodDevices{{Namespace: "llm", Name: "a", Devices: []podmap.DeviceRef{
			{Kind: podmap.KindDRA, Pool: "node-a", Device: "gpu-0-mig-1g.10gb-19-0", Part: true},
			{Kind: podmap.KindDRA, Pool: "node-a", Device: "gpu-vfio-1", Part: true},
		}}},
		Owners:   map[string]types.UID{"llm/a": "uid-a"},
		Resolver: podmap.Resolver{DRADevice: resolve},
	})
	if len(res.Holders) != 0 || len(res.Unattributable) != 0 || len(res.Frozen) != 0 {
		t.Errorf("holders %v, unattributable %v, frozen %v; want none", res.Holders, res.Unattributable, res.Frozen)
	}
}

// One DRA device under several pods (a shared claim, an admin-access claim)
// is held by each of them; it is not frozen as a whole GPU listed twice is.
func TestBuildSharesDRADevices(t *testing.T) {
	resolve := podmap.DRAResolver([]*resourcev1.ResourceSlice{draSlice(policy.DriverGPU, 1, draDev("gpu-0", "type", "gpu", "uuid", uuid0))})
	dev := podmap.DeviceRef{Kind: podmap.KindDRA, Pool: "node-a", Device: "gpu-0", Part: true}
	res := podmap.Build(podmap.Sources{
		Pods: []podmap.PodDevices{
			{Namespace: "llm", Name: "a", Devices: []podmap.DeviceRef{dev}},
			{Namespace: "llm", Name: "b", Devices: []podmap.DeviceRef{dev}},
		},
		Owners:   map[string]types.UID{"llm/a": "uid-a", "llm/b": "uid-b"},
		Resolver: podmap.Resolver{DRADevice: resolve},
	})
	if h := res.Holders[uuid0]; h.Len() != 2 || !h.Has("uid-a") || !h.Has("uid-b") || res.Frozen[uuid0] != nil {
		t.Errorf("holders %v, frozen %v; want both pods holding %s, not frozen", h, res.Frozen, uuid0)
	}
}
