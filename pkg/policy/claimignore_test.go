package policy_test

import (
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Under unlimitedPods: Ignore, pods without a limit cost nothing, and a
// named claim's GPUs still count once in the budget's GPUs, not per sharer.
func TestIgnoreCountsASharedClaimsGPUsOnce(t *testing.T) {
	cluster := fakeCluster{"h100-0": h100}
	var charges []policy.Charge
	for _, uid := range []string{"a", "b"} {
		p := pod().UID(uid).NamedClaim("gpus", "shared").Annotation(policy.AnnotationClaimGPUs, "gpus=2").Obj()
		cost := policy.DefaultCatalog().CostOf(p, cluster, false)
		charges = append(charges, cost.Charges(p.UID, p.Namespace)...)
	}
	if c := policy.CountCommitted(charges, nil, time.Now()); c.GPUs != 2 || c.Pods != 2 {
		t.Errorf("two unlimited pods on one 2-GPU claim, Ignore: %d pods, %d GPUs; want 2 pods on 2 GPUs", c.Pods, c.GPUs)
	}
}
