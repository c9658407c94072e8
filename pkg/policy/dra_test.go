package policy_test

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// draCluster is a cluster whose GPUs, or some of them, come from DRA: nodes
// with product labels (the device plugin's, GPU Feature Discovery's) and the
// products DRA publishes for each extended resource, by node.
type draCluster struct {
	fakeCluster
	dra map[corev1.ResourceName]map[string][]string // resource -> node -> products
}

func (c draCluster) DRAProducts(r corev1.ResourceName, node string) []string {
	var out []string
	for n, products := range c.dra[r] {
		if node == "" || node == n {
			out = append(out, products...)
		}
	}
	return sortedDistinct(out)
}

func sortedDistinct(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v], out = true, append(out, v)
		}
	}
	for i := range out { // a handful of values
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

const h100DRA = "NVIDIA-H100-80GB-HBM3" // policy.DRAProduct("NVIDIA H100 80GB HBM3")

func TestDRAProduct(t *testing.T) {
	for in, want := range map[string]string{
		"NVIDIA H100 80GB HBM3": "NVIDIA-H100-80GB-HBM3",
		" NVIDIA L4 ":           "NVIDIA-L4",
		"NVIDIA-H200":           "NVIDIA-H200",
		"":                      "",
	} {
		if got := policy.DRAProduct(in); got != want {
			t.Errorf("DRAProduct(%q) = %q; want %q", in, got, want)
		}
	}
}

// Pods whose whole GPUs come from DRA as extended resources: NVIDIA's
// DeviceClass's own resource, nvidia.com/gpu on a cluster whose DeviceClass
// names it its extendedResourceName, and the MIG and vfio classes.
func TestDRAServedGPUs(t *testing.T) {
	draOnly := draCluster{fakeCluster: fakeCluster{"dra-0": "", "dra-1": ""}, dra: map[corev1.ResourceName]map[string][]string{
		policy.ResourceDRAGPU: {"dra-0": {h100DRA}, "dra-1": {h100DRA}},
		policy.ResourceGPU:    {"dra-0": {h100DRA}, "dra-1": {h100DRA}}, // the class declares extendedResourceName nvidia.com/gpu
	}}
	mixed := draCluster{fakeCluster: fakeCluster{"l4-0": l4, "dra-0": ""}, dra: map[corev1.ResourceName]map[string][]string{
		policy.ResourceGPU: {"dra-0": {h100DRA}},
	}}
	noDevices := draCluster{fakeCluster: fakeCluster{"cpu-0": ""}}
	newBoard := draCluster{fakeCluster: fakeCluster{"dra-0": ""}, dra: map[corev1.ResourceName]map[string][]string{
		policy.ResourceDRAGPU: {"dra-0": {"NVIDIA-B999"}},
	}}
	tests := []struct {
		name    string
		cluster policy.Cluster
		pod     *corev1.Pod
		gpus    int64
		errs    []string // substrings of the denials, in order
		warning string
	}{
		{name: "DeviceClass resource within the DRA devices' range", cluster: draOnly,
			pod: pod().Resource(0, policy.ResourceDRAGPU, 2).Limit("500").Obj(), gpus: 2},
		{name: "DeviceClass resource above the DRA devices' maximum", cluster: draOnly,
			pod: pod().Resource(0, policy.ResourceDRAGPU, 1).Limit("900").Obj(), gpus: 1,
			errs: []string{`"900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}},
		{name: "nvidia.com/gpu on a DRA-only cluster takes the DRA devices' products", cluster: draOnly,
			pod: pod().GPU(1).Limit("300").Obj(), gpus: 1},
		{name: "nvidia.com/gpu bound to a node: that node's DRA devices", cluster: draOnly,
			pod: pod().GPU(1).NodeName("dra-1").Limit("150").Obj(), gpus: 1,
			errs: []string{`"150": below the 200 W minimum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}},
		{name: "nvidia.com/gpu on a mixed cluster: labelled and DRA products both bound it", cluster: mixed,
			pod: pod().GPU(1).Limit("500").Obj(), gpus: 1,
			errs: []string{`no limit is valid on every GPU the pod can land on (the cluster's GPU nodes and the devices DRA publishes for nvidia.com/gpu)`}},
		{name: "DeviceClass resource with no device published: unknown products, named", cluster: noDevices,
			pod: pod().Resource(0, policy.ResourceDRAGPU, 1).Limit("300").Obj(), gpus: 1,
			errs: []string{`the devices DRA publishes for deviceclass.resource.kubernetes.io/gpu.nvidia.com`}},
		{name: "a DRA product the catalog does not know: its productName named", cluster: newBoard,
			pod: pod().Resource(0, policy.ResourceDRAGPU, 1).Limit("300").Obj(), gpus: 1,
			errs: []string{`no power range is known for GPU product "NVIDIA-B999" (the productName of the devices DRA publishes for deviceclass.resource.kubernetes.io/gpu.nvidia.com); ask the cluster operator to add the product`}},
		{name: "MIG DeviceClass with a limit", cluster: draOnly,
			pod:  pod().Resource(0, policy.ResourceDRAMIG, 1).Limit("300").Obj(),
			errs: []string{`the pod requests MIG slices (deviceclass.resource.kubernetes.io/mig.nvidia.com)`}},
		{name: "vfio passthrough GPUs with a limit", cluster: draOnly,
			pod: pod().Resource(0, policy.ResourceDRAVFIO, 1).Limit("300").Obj(), gpus: 1,
			errs: []string{`GPUs bound to vfio-pci for a virtual machine (deviceclass.resource.kubernetes.io/vfio.gpu.nvidia.com)`}},
		{name: "vfio passthrough GPUs without a limit are admitted", cluster: draOnly,
			pod: pod().Resource(0, policy.ResourceDRAVFIO, 1).Obj(), gpus: 1},
		{name: "another DeviceClass's resource is not a GPU", cluster: draOnly,
			pod:     pod().Resource(0, "deviceclass.resource.kubernetes.io/nic.example.com", 1).Limit("300").Obj(),
			warning: "has no effect: the pod requests no nvidia.com/gpu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := policy.DemandOf(&tt.pod.Spec).GPUs; got != tt.gpus {
				t.Errorf("DemandOf: %d GPUs; want %d", got, tt.gpus)
			}
			v := newAdmission(t).Mutate(admissionv1.Create, tt.pod, nil, tt.cluster, nil, policy.ClaimsDemand{})
			if len(v.Errors) != len(tt.errs) {
				t.Fatalf("errors %v; want %d containing %q", v.Errors, len(tt.errs), tt.errs)
			}
			for i, want := range tt.errs {
				if !strings.Contains(v.Errors[i].Error(), want) {
					t.Errorf("error %d: %v; want it to contain %q", i, v.Errors[i], want)
				}
			}
			if tt.warning != "" && (len(v.Warnings) != 1 || !strings.Contains(v.Warnings[0], tt.warning)) {
				t.Errorf("warnings %q; want one containing %q", v.Warnings, tt.warning)
			}
			if len(tt.errs) == 0 && tt.gpus > 0 && tt.pod.Annotations[policy.AnnotationPowerLimit] != "" && v.Stamp != tt.pod.Annotations[policy.AnnotationPowerLimit] {
				t.Errorf("stamp %q; want the admitted limit", v.Stamp)
			}
		})
	}
}

// An unlimited pod whose GPUs come from DRA costs what the devices it can get
// draw at most; with no device published, the catalog's highest default.
func TestDRACost(t *testing.T) {
	cluster := draCluster{fakeCluster: fakeCluster{"l4-0": l4}, dra: map[corev1.ResourceName]map[string][]string{
		policy.ResourceDRAGPU: {"dra-0": {h100DRA}},
	}}
	catalog := policy.DefaultCatalog()
	if c := catalog.CostOf(pod().Resource(0, policy.ResourceDRAGPU, 2).Obj(), cluster, true); c.Watts != 1400 || c.GPUs != 2 || !c.Unlimited {
		t.Errorf("2 DRA H100s without a limit cost %+v; want 1400 W (2 x 700 W, the H100's default)", c)
	}
	if c := catalog.CostOf(pod().Resource(0, policy.ResourceDRAGPU, 1).Limit("300").Obj(), cluster, true); c.Watts != 300 {
		t.Errorf("1 DRA GPU at 300 W costs %+v; want 300 W", c)
	}
	empty := draCluster{fakeCluster: fakeCluster{}}
	highest := catalog.Cost(policy.Chargeable{GPUs: 1, Placement: &policy.Placement{}}, empty, true)
	if c := catalog.CostOf(pod().Resource(0, policy.ResourceDRAGPU, 1).Obj(), empty, true); c.Watts != highest.Watts || c.Watts == 0 {
		t.Errorf("a DRA GPU with no device published costs %+v; want the catalog's highest default, %d W", c, highest.Watts)
	}
}

// A DeviceClass may name any extended resource its extendedResourceName:
// one served with NVIDIA GPUs is not counted by policy, so a limit on it is
// refused, and budgets refuse the pod, each saying which form to use.
func TestOtherDRAGPUResources(t *testing.T) {
	cluster := draCluster{fakeCluster: fakeCluster{"h100-0": h100}, dra: map[corev1.ResourceName]map[string][]string{
		"example.com/big-gpu": {"dra-0": {h100DRA}},
	}}
	custom := pod().Resource(0, "example.com/big-gpu", 1).Resource(0, "rdma.example.com/hca", 1)
	if got := policy.OtherDRAGPUResources(&custom.Obj().Spec, cluster); len(got) != 1 || got[0] != "example.com/big-gpu" {
		t.Errorf("OtherDRAGPUResources = %v; want the class's resource only", got)
	}
	v := newAdmission(t).Mutate(admissionv1.Create, custom.Limit("300").Obj(), nil, cluster, nil, policy.ClaimsDemand{})
	want := `"300": the pod requests example.com/big-gpu, which a DeviceClass serves with NVIDIA GPUs through DRA (its extendedResourceName), and the power webhook counts GPUs only as nvidia.com/gpu`
	if len(v.Errors) != 1 || !strings.Contains(v.Errors[0].Error(), want) {
		t.Errorf("a limit on it: %v; want %q", v.Errors, want)
	}
	if got := policy.Unchargeable(&custom.Obj().Spec, policy.ClaimsDemand{}, cluster); got != "its example.com/big-gpu request (a DeviceClass serves it with NVIDIA GPUs through DRA)" {
		t.Errorf("Unchargeable = %q", got)
	}
	// Without such a class the resource is another device, not a GPU.
	if got := policy.Unchargeable(&custom.Obj().Spec, policy.ClaimsDemand{}, cluster.fakeCluster); got != "" {
		t.Errorf("no class serves it: Unchargeable = %q; want charged as it is", got)
	}
}
