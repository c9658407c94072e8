package draindex

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// nvidiaClass is the DeviceClass NVIDIA's driver installs for whole GPUs
// (its Helm chart's deviceclass-gpu.yaml on resource.k8s.io/v1).
func nvidiaClass(name, typ string, extendedResource *string) *resourcev1.DeviceClass {
	return &resourcev1.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourcev1.DeviceClassSpec{
		Selectors: []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{
			Expression: fmt.Sprintf("device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == '%s'", typ)}}},
		ExtendedResourceName: extendedResource,
	}}
}

func gpuDevice(name, typ, product string) resourcev1.Device {
	attrs := map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
		"type":        {StringValue: ptr.To(typ)},
		"productName": {StringValue: ptr.To(product)},
		"uuid":        {StringValue: ptr.To("GPU-" + name)},
	}
	if typ == "mig" {
		attrs["profile"] = resourcev1.DeviceAttribute{StringValue: ptr.To("1g.10gb")}
	}
	return resourcev1.Device{Name: name, Attributes: attrs}
}

func nodeSlice(name, driver, node string, generation int64, devices ...resourcev1.Device) *resourcev1.ResourceSlice {
	return &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: resourcev1.ResourceSliceSpec{
		Driver: driver, Pool: resourcev1.ResourcePool{Name: node, Generation: generation, ResourceSliceCount: 1},
		NodeName: ptr.To(node), Devices: devices,
	}}
}

const (
	h100 = "NVIDIA H100 80GB HBM3"
	l4   = "NVIDIA L4"
)

func TestProducts(t *testing.T) {
	x := New(testr.New(t))
	classes, slicesH := x.ClassHandler(), x.SliceHandler()
	classes.OnAdd(nvidiaClass(policy.DeviceClassGPU, "gpu", ptr.To(policy.ResourceGPU)), true)
	classes.OnAdd(nvidiaClass(policy.DeviceClassMIG, "mig", nil), true)
	slicesH.OnAdd(nodeSlice("a", policy.DriverGPU, "node-a", 1, gpuDevice("gpu-0", "gpu", h100), gpuDevice("gpu-1", "gpu", h100)), true)
	slicesH.OnAdd(nodeSlice("b", policy.DriverGPU, "node-b", 1, gpuDevice("gpu-0", "gpu", l4), gpuDevice("gpu-1-mig-1g.10gb-19-0", "mig", h100)), true)
	slicesH.OnAdd(nodeSlice("c", "gpu.amd.com", "node-c", 1, gpuDevice("gpu-0", "gpu", "AMD Instinct MI300X")), true)

	for _, tt := range []struct {
		resource corev1.ResourceName
		node     string
		want     []string
	}{
		{policy.ResourceDRAGPU, "", []string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"}},
		{policy.ResourceGPU, "", []string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-L4"}}, // the class's extendedResourceName
		{policy.ResourceGPU, "node-a", []string{"NVIDIA-H100-80GB-HBM3"}},
		{policy.ResourceGPU, "node-c", nil}, // another driver's devices: no NVIDIA product
		{policy.ResourceDRAMIG, "node-b", []string{"NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"}},
		{"deviceclass.resource.kubernetes.io/other", "", nil},
	} {
		if got := x.Products(tt.resource, tt.node); !slices.Equal(got, tt.want) {
			t.Errorf("Products(%s, %q) = %q; want %q", tt.resource, tt.node, got, tt.want)
		}
	}

	// The driver replaces node-a's slice with a new generation: only the
	// newest counts, as for the scheduler.
	slicesH.OnAdd(nodeSlice("a-2", policy.DriverGPU, "node-a", 2, gpuDevice("gpu-0", "gpu", l4)), false)
	if got := x.Products(policy.ResourceGPU, "node-a"); !slices.Equal(got, []string{"NVIDIA-L4"}) {
		t.Errorf("after generation 2: Products(node-a) = %q; want only the new slice's L4", got)
	}
	slicesH.OnDelete(nodeSlice("a-2", policy.DriverGPU, "node-a", 2))
	if got := x.Products(policy.ResourceGPU, "node-a"); !slices.Equal(got, []string{"NVIDIA-H100-80GB-HBM3"}) {
		t.Errorf("after generation 2 went: Products(node-a) = %q; want generation 1's H100s again", got)
	}
	slicesH.OnDelete(nodeSlice("b", policy.DriverGPU, "node-b", 1))
	if got := x.Products(policy.ResourceGPU, ""); !slices.Equal(got, []string{"NVIDIA-H100-80GB-HBM3"}) {
		t.Errorf("after node-b's slice went: Products = %q; want the H100s only", got)
	}

	// The class stops naming nvidia.com/gpu: that resource is no longer
	// served by DRA; its own still is.
	classes.OnUpdate(nil, nvidiaClass(policy.DeviceClassGPU, "gpu", nil))
	if got := x.Products(policy.ResourceGPU, ""); len(got) != 0 {
		t.Errorf("class without extendedResourceName: Products(nvidia.com/gpu) = %q; want none", got)
	}
	if got := x.Products(policy.ResourceDRAGPU, ""); !slices.Equal(got, []string{"NVIDIA-H100-80GB-HBM3"}) {
		t.Errorf("Products(%s) = %q; want the H100s", policy.ResourceDRAGPU, got)
	}
	classes.OnDelete(toolscacheTombstone(nvidiaClass(policy.DeviceClassGPU, "gpu", nil)))
	if got := x.Products(policy.ResourceDRAGPU, ""); len(got) != 0 {
		t.Errorf("class deleted: Products = %q; want none", got)
	}
}

// A selector the scheduler's CEL library does not compile, or that fails on
// a device, matches nothing: admission then knows no product and refuses a
// limit, rather than guessing.
func TestSelectorsThatDoNotEvaluate(t *testing.T) {
	x := New(testr.New(t))
	bad := nvidiaClass("broken", "gpu", ptr.To("example.com/gpu"))
	bad.Spec.Selectors[0].CEL.Expression = "device.attributes['gpu.nvidia.com'].type =="
	failing := nvidiaClass("failing", "gpu", ptr.To("example.com/other"))
	failing.Spec.Selectors[0].CEL.Expression = "device.attributes['gpu.nvidia.com'].missing == 'x'"
	x.ClassHandler().OnAdd(bad, true)
	x.ClassHandler().OnAdd(failing, true)
	x.SliceHandler().OnAdd(nodeSlice("a", policy.DriverGPU, "node-a", 1, gpuDevice("gpu-0", "gpu", h100)), true)
	for _, r := range []corev1.ResourceName{"example.com/gpu", "example.com/other", "deviceclass.resource.kubernetes.io/broken"} {
		if got := x.Products(r, ""); len(got) != 0 {
			t.Errorf("Products(%s) = %q; want none", r, got)
		}
	}
}

// Attributes are the driver's word, bounded: a productName no board has is
// not a product, and a device without one is none.
func TestUntrustedAttributes(t *testing.T) {
	x := New(testr.New(t))
	x.ClassHandler().OnAdd(nvidiaClass(policy.DeviceClassGPU, "gpu", nil), true)
	noName := gpuDevice("gpu-1", "gpu", "")
	delete(noName.Attributes, "productName")
	x.SliceHandler().OnAdd(nodeSlice("a", policy.DriverGPU, "node-a", 1,
		gpuDevice("gpu-0", "gpu", strings.Repeat("X", maxProductName+1)), noName, gpuDevice("gpu-2", "vfio", h100)), true)
	if got := x.Products(policy.ResourceDRAGPU, ""); len(got) != 0 {
		t.Errorf("Products = %q; want none (an oversized name, no name, a vfio device)", got)
	}
}

func TestTrimKeepsWhatTheIndexReads(t *testing.T) {
	rs := nodeSlice("a", policy.DriverGPU, "node-a", 3, gpuDevice("gpu-0", "gpu", h100))
	rs.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	rs.Spec.Devices[0].Taints = []resourcev1.DeviceTaint{{Key: "k", Effect: resourcev1.DeviceTaintEffectNoSchedule}}
	out, err := TrimSlice(rs)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*resourcev1.ResourceSlice)
	if got.ManagedFields != nil || got.Spec.Devices[0].Taints != nil || got.Spec.Pool.Generation != 3 || *got.Spec.NodeName != "node-a" ||
		*got.Spec.Devices[0].Attributes["productName"].StringValue != h100 {
		t.Errorf("TrimSlice = %+v", got.Spec)
	}
	x := New(testr.New(t))
	c, _ := TrimClass(nvidiaClass(policy.DeviceClassGPU, "gpu", ptr.To(policy.ResourceGPU)))
	x.ClassHandler().OnAdd(c, true)
	x.SliceHandler().OnAdd(got, true)
	if p := x.Products(policy.ResourceGPU, "node-a"); !slices.Equal(p, []string{"NVIDIA-H100-80GB-HBM3"}) {
		t.Errorf("from trimmed objects: Products = %q", p)
	}
}

func toolscacheTombstone(obj any) toolscache.DeletedFinalStateUnknown {
	return toolscache.DeletedFinalStateUnknown{Key: "gone", Obj: obj}
}

// A claim's request narrows its class with selectors of its own: what it can
// get is what both match, counted by node.
func TestMatch(t *testing.T) {
	x := New(testr.New(t))
	x.ClassHandler().OnAdd(nvidiaClass(policy.DeviceClassGPU, "gpu", nil), true)
	x.SliceHandler().OnAdd(nodeSlice("a", policy.DriverGPU, "node-a", 1, gpuDevice("gpu-0", "gpu", h100), gpuDevice("gpu-1", "gpu", h100)), true)
	x.SliceHandler().OnAdd(nodeSlice("b", policy.DriverGPU, "node-b", 1, gpuDevice("gpu-0", "gpu", l4)), true)
	sel := func(expr string) []resourcev1.DeviceSelector {
		return []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{Expression: expr}}}
	}
	for _, tt := range []struct {
		name      string
		class     string
		selectors []resourcev1.DeviceSelector
		want      map[string]map[string]int
	}{
		{"the class alone", policy.DeviceClassGPU, nil,
			map[string]map[string]int{"node-a": {"NVIDIA-H100-80GB-HBM3": 2}, "node-b": {"NVIDIA-L4": 1}}},
		{"pinned to a product", policy.DeviceClassGPU, sel("device.attributes['gpu.nvidia.com'].productName == 'NVIDIA L4'"),
			map[string]map[string]int{"node-b": {"NVIDIA-L4": 1}}},
		{"a selector that does not compile", policy.DeviceClassGPU, sel("device.attributes["), nil},
		{"a class that does not exist", "nope", nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := x.Match(tt.class, tt.selectors)
			if len(got) != len(tt.want) {
				t.Fatalf("Match = %v; want %v", got, tt.want)
			}
			for node, products := range tt.want {
				for p, n := range products {
					if got[node][p] != n {
						t.Errorf("Match[%s][%s] = %d; want %d (all: %v)", node, p, got[node][p], n, got)
					}
				}
			}
		})
	}
	// Only a pool's newest generation counts, as for the scheduler.
	x.SliceHandler().OnAdd(nodeSlice("a-2", policy.DriverGPU, "node-a", 2, gpuDevice("gpu-0", "gpu", h100)), false)
	if got, _ := x.Match(policy.DeviceClassGPU, nil); got["node-a"]["NVIDIA-H100-80GB-HBM3"] != 1 {
		t.Errorf("after node-a's generation 2: Match = %v; want its one H100", got)
	}
}
