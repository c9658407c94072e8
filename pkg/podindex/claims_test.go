package podindex

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nodeindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A pod whose limit and claims' counts carry no valid signature (admitted
// before stamps were signed, or under another key) is charged its claims'
// GPUs as a pod without a limit, as a device-plugin pod is: not nothing.
func TestUnsignedClaimCountsChargeAsUnlimited(t *testing.T) {
	key := policy.NewStampKey([]byte("enabled after the pods were admitted"))
	ix := New()
	ix.Validated = key.Validated
	ix.ClaimsSigned = key.ClaimsSigned
	claims := testpod.MakePod("claims", "llm").UID("c").ResourceClaim("gpus", "two").Limit("300").Stamp("300").
		Annotation(policy.AnnotationClaimGPUs, "gpus=2").Obj()
	plugin := testpod.MakePod("plugin", "llm").UID("p").GPU(2).Limit("300").Stamp("300").Obj()
	for _, p := range []*corev1.Pod{claims, plugin} {
		if err := ix.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	nodes := nodeindex.New()
	nodes.Set("h100-0", "NVIDIA-H100-80GB-HBM3")
	cost := func(name string) policy.Cost {
		p, _ := ix.Get("llm", name)
		if p.GPU == nil {
			return policy.Cost{}
		}
		return policy.DefaultCatalog().Cost(p.GPU.Chargeable, nodes, true)
	}
	if c := cost("plugin"); c.Watts == 0 {
		t.Fatalf("device-plugin pod with an unsigned stamp costs %v; want its unlimited cost", c)
	}
	if c := cost("claims"); c.Watts == 0 || c.GPUs != 2 {
		t.Errorf("claims pod with unsigned counts costs %v (%d GPUs); want its 2 GPUs charged as unlimited, like the device-plugin pod (%v)", c, c.GPUs, cost("plugin"))
	}
}
