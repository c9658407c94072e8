package policy_test

import (
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestClaimsDemandOf(t *testing.T) {
	h100s := func(perNode ...int) map[string]map[string]int {
		out := map[string]map[string]int{}
		for i, n := range perNode {
			out["node-"+string(rune('a'+i))] = map[string]int{h100DRA: n}
		}
		return out
	}
	exact := func(src string, n int64, devices map[string]map[string]int) policy.ClaimRequest {
		return policy.ClaimRequest{Source: src, Class: policy.DeviceClassGPU, Count: n, Devices: devices}
	}
	tests := []struct {
		name     string
		reqs     []policy.ClaimRequest
		gpus     int64
		products []string
		mig      int
		problem  string
	}{
		{name: "ExactCount counts its count", reqs: []policy.ClaimRequest{exact("r", 2, h100s(8))}, gpus: 2, products: []string{h100DRA}},
		{name: "ExactCount without a count is one", reqs: []policy.ClaimRequest{exact("r", 0, h100s(8))}, gpus: 1, products: []string{h100DRA}},
		{name: "requests add up", reqs: []policy.ClaimRequest{exact("a", 2, h100s(8)), exact("b", 3, h100s(8))}, gpus: 5, products: []string{h100DRA}},
		{name: "All: the most one node has that match", reqs: []policy.ClaimRequest{{Source: "r", Class: policy.DeviceClassGPU, All: true, Devices: h100s(4, 8, 2)}},
			gpus: 8, products: []string{h100DRA}},
		{name: "All: a node's devices and those every node reaches", reqs: []policy.ClaimRequest{{Source: "r", Class: policy.DeviceClassGPU, All: true,
			Devices: map[string]map[string]int{"node-a": {h100DRA: 4}, "node-b": {h100DRA: 2}, "": {h100DRA: 3}}}}, gpus: 7, products: []string{h100DRA}},
		{name: "All with nothing published is unbounded", reqs: []policy.ClaimRequest{{Source: "r", Class: policy.DeviceClassGPU, All: true}},
			problem: "r: allocationMode All and no ResourceSlice publishes a device it matches: how many GPUs it gets is unbounded"},
		{name: "firstAvailable: its largest alternative, every alternative's products", reqs: []policy.ClaimRequest{{Source: "r", Alternatives: []policy.ClaimRequest{
			exact("r/big", 4, map[string]map[string]int{"node-a": {h100DRA: 4}}),
			exact("r/small", 1, map[string]map[string]int{"node-b": {"NVIDIA-L4": 8}}),
		}}}, gpus: 4, products: []string{h100DRA, "NVIDIA-L4"}},
		{name: "admin access counts nothing", reqs: []policy.ClaimRequest{{Source: "r", Class: policy.DeviceClassGPU, Count: 8, AdminAccess: true, Devices: h100s(8)}}},
		{name: "another driver's devices are not GPUs", reqs: []policy.ClaimRequest{{Source: "nic", Class: "nic.example.com", Count: 2, OtherDevices: true}}},
		{name: "a class matching nothing published cannot be judged", reqs: []policy.ClaimRequest{{Source: "x", Class: "h200.example.com", Count: 2}},
			problem: `x: DeviceClass "h200.example.com" matches no published device, so what it gets cannot be judged`},
		{name: "NVIDIA's vfio class cannot be capped", reqs: []policy.ClaimRequest{{Source: "v", Class: "vfio.gpu.nvidia.com", Count: 1}},
			problem: "v: DeviceClass vfio.gpu.nvidia.com gives GPUs bound to vfio-pci for a virtual machine, which the node's NVML does not drive"},
		{name: "NVIDIA's class with nothing published still counts", reqs: []policy.ClaimRequest{exact("r", 2, nil)}, gpus: 2},
		{name: "NVIDIA's MIG class is MIG, published or not", reqs: []policy.ClaimRequest{{Source: "m", Class: "mig.nvidia.com", Count: 1}}, mig: 1},
		{name: "MIG devices through another class are named", reqs: []policy.ClaimRequest{{Source: "m", Class: "all-nvidia.example.com", Count: 1,
			Devices: map[string]map[string]int{"node-a": {h100DRA + "-MIG-1g.10gb": 7}}}}, gpus: 1, products: []string{h100DRA + "-MIG-1g.10gb"}, mig: 1},
		{name: "a missing template is a problem", reqs: []policy.ClaimRequest{{Source: `claim "gpus"`, Missing: `ResourceClaimTemplate "t" not found`}},
			problem: `claim "gpus": ResourceClaimTemplate "t" not found`},
		{name: "counts saturate", reqs: []policy.ClaimRequest{exact("a", 1<<62, nil), exact("b", 1<<62, nil), exact("c", 1<<62, nil)}, gpus: 1<<63 - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := policy.ClaimsDemandOf(tt.reqs)
			if d.GPUs != tt.gpus || !slices.Equal(d.Products, tt.products) || len(d.MIG) != tt.mig {
				t.Errorf("ClaimsDemandOf = %+v; want %d GPUs, products %q, %d MIG", d, tt.gpus, tt.products, tt.mig)
			}
			if got := strings.Join(d.Problems, "; "); got != tt.problem {
				t.Errorf("problems %q; want %q", got, tt.problem)
			}
		})
	}
}

// A limit on a pod whose GPUs come from claims is checked against what the
// claims can get; what cannot be counted is refused, saying why.
func TestMutateWithClaims(t *testing.T) {
	cluster := fakeCluster{"l4-0": l4}
	claims := func(reqs ...policy.ClaimRequest) policy.ClaimsDemand { return policy.ClaimsDemandOf(reqs) }
	twoH100s := policy.ClaimRequest{Source: `claim "gpus" (ResourceClaimTemplate "two"), request "gpu"`, Class: policy.DeviceClassGPU, Count: 2,
		Devices: map[string]map[string]int{"dra-0": {h100DRA: 8}}}
	for _, tt := range []struct {
		name   string
		claims policy.ClaimsDemand
		limit  string
		err    string
		stamp  string
	}{
		{name: "within the claim's H100s", claims: claims(twoH100s), limit: "300", stamp: "300"},
		{name: "above them", claims: claims(twoH100s), limit: "900",
			err: `"900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`},
		{name: "MIG through a claim", claims: claims(policy.ClaimRequest{Source: `claim "m"`, Class: "mig.nvidia.com", Count: 1,
			Devices: map[string]map[string]int{"dra-0": {h100DRA + "-MIG-1g.10gb": 1}}}), limit: "300",
			err: `claim "m" can get MIG devices, and a power limit applies to a whole board`},
		{name: "unbounded All", claims: claims(policy.ClaimRequest{Source: `claim "all"`, Class: policy.DeviceClassGPU, All: true}), limit: "300",
			err: `the GPUs the pod's claims get cannot be counted: claim "all": allocationMode All`},
		{name: "claims for no GPU: the limit has no effect", claims: claims(policy.ClaimRequest{Source: "nic", Class: "nic.example.com", Count: 1, OtherDevices: true}), limit: "300"},
		{name: "admin access", claims: claims(policy.ClaimRequest{Source: `claim "mon"`, Class: policy.DeviceClassGPU, Count: 1, AdminAccess: true}), limit: "300",
			err: `claim "mon" asks for admin access to devices other pods hold`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := pod().Limit(tt.limit).ResourceClaim("gpus", "two").Obj()
			v := newAdmission(t).Mutate(admissionv1.Create, p, nil, cluster, nil, tt.claims)
			switch {
			case tt.err == "" && len(v.Errors) > 0:
				t.Fatalf("denied: %v", v.Errors)
			case tt.err != "" && (len(v.Errors) != 1 || !strings.Contains(v.Errors[0].Error(), tt.err)):
				t.Fatalf("errors %v; want one containing %q", v.Errors, tt.err)
			}
			if v.Stamp != tt.stamp && tt.err == "" {
				t.Errorf("stamp %q; want %q", v.Stamp, tt.stamp)
			}
		})
	}
}

// A claims pod gets its limit at creation: one added or changed later would
// be checked against templates that may have been replaced since the
// controller copied them.
func TestClaimsPodLimitOnlyAtCreation(t *testing.T) {
	cluster := fakeCluster{"l4-0": l4}
	running := pod().ResourceClaim("gpus", "two").UID("uid-1").Obj()
	limited := running.DeepCopy()
	limited.Annotations = map[string]string{policy.AnnotationPowerLimit: "300"}
	a := newAdmission(t)
	for name, v := range map[string]policy.Verdict{
		"mutate":   a.Mutate(admissionv1.Update, limited, running, cluster, nil, policy.ClaimsDemand{}),
		"validate": a.Validate(admissionv1.Update, limited, running, cluster, policy.ClaimsDemand{}),
	} {
		if len(v.Errors) != 1 || !strings.Contains(v.Errors[0].Error(), "a pod with resourceClaims gets its power limit when it is created, not later") {
			t.Errorf("%s: a limit added on update: %v; want it refused", name, v.Errors)
		}
	}
	kept := limited.DeepCopy()
	if v := a.Validate(admissionv1.Update, kept, limited, cluster, policy.ClaimsDemand{}); len(v.Errors) != 0 {
		t.Errorf("an update that keeps the limit: %v; want it admitted", v.Errors)
	}
}
