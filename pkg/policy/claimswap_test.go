package policy_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A claim made again for a budgeted pod without a limit may not get GPUs
// that cannot be counted (All with nothing published, a class no published
// device matches yet): the pod's own admission would have been refused
// under the budget for the same claim.
func TestClaimReplacementUncountableForABudgetedPod(t *testing.T) {
	d := policy.ClaimsDemandOf([]policy.ClaimRequest{{
		Source: `ResourceClaim "swap", request "gpu"`, Claim: "swap",
		Class: policy.DeviceClassGPU, All: true, // nothing published yet: unbounded
	}})
	if len(d.Problems) == 0 {
		t.Fatalf("precondition: All with nothing published is a problem; got %+v", d)
	}
	users := []policy.ClaimUser{{Pod: "llm/unlimited", GPUs: 1, Limited: false}}
	if why := policy.ClaimReplacement(`ResourceClaim "swap"`, d, users, true); why == "" {
		t.Errorf("a claim whose GPUs cannot be counted, made again under a budgeted pod admitted for 1 GPU of it, is allowed: " +
			"the pod's admission would have refused it (Unchargeable), and the budget keeps charging 1 GPU")
	}
	// The same with a class that matches no published device (could later give any number of GPUs).
	d = policy.ClaimsDemandOf([]policy.ClaimRequest{{
		Source: `ResourceClaim "swap", request "gpu"`, Claim: "swap", Class: "big-gpus.example.com", Count: 8,
	}})
	if why := policy.ClaimReplacement(`ResourceClaim "swap"`, d, users, true); why == "" {
		t.Errorf("a claim on a class matching no published device (%v), made again under a budgeted pod, is allowed", d.Problems)
	}
}

// A DeviceClass whose extendedResourceName is an nvidia.com/ name other
// than those policy counts serves NVIDIA GPUs budgets cannot count: it is
// refused like any other such name.
func TestNVIDIANamedDRAExtendedResourceIsRefused(t *testing.T) {
	cluster := draCluster{fakeCluster: fakeCluster{"h100-0": h100}, dra: map[corev1.ResourceName]map[string][]string{
		"nvidia.com/h100": {"dra-0": {h100DRA}},
	}}
	p := pod().Resource(0, "nvidia.com/h100", 8).Obj()
	if got := policy.DemandOf(&p.Spec).GPUs; got != 0 {
		t.Logf("DemandOf counts %d GPUs", got)
	}
	if got := policy.OtherDRAGPUResources(&p.Spec, cluster); len(got) == 0 {
		t.Errorf("OtherDRAGPUResources = %v; want nvidia.com/h100, which a DeviceClass serves with H100s", got)
	}
	if got := policy.Unchargeable(&p.Spec, policy.ClaimsDemand{}, cluster); got == "" {
		t.Errorf("Unchargeable = %q: a pod getting 8 H100s through DRA as nvidia.com/h100 is admitted under a budget and charged %d GPUs",
			got, policy.DemandOf(&p.Spec).GPUs)
	}
}
