package policy_test

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestDemandOf(t *testing.T) {
	tests := []struct {
		name   string
		pod    *corev1.Pod
		gpus   int64
		mig    []corev1.ResourceName
		claims bool
	}{
		{"no GPUs", testpod.MakePod("p", "ns").Obj(), 0, nil, false},
		{"one container", testpod.MakePod("p", "ns").GPU(4).Obj(), 4, nil, false},
		{"limit without request counts", testpod.MakePod("p", "ns").GPULimitOnly(2).Obj(), 2, nil, false},
		{"app containers add up", testpod.MakePod("p", "ns").GPU(2).Container("b", 3).Obj(), 5, nil, false},
		{"init container above the apps wins", testpod.MakePod("p", "ns").GPU(2).InitContainer("warm", 8).Obj(), 8, nil, false},
		{"init container below the apps", testpod.MakePod("p", "ns").GPU(4).InitContainer("warm", 1).Obj(), 4, nil, false},
		{"init containers take the max, not the sum", testpod.MakePod("p", "ns").GPU(1).InitContainer("a", 3).InitContainer("b", 2).Obj(), 3, nil, false},
		{"sidecar adds to the apps", testpod.MakePod("p", "ns").GPU(2).Sidecar("proxy", 1).Obj(), 3, nil, false},
		{"init container runs beside earlier sidecars", testpod.MakePod("p", "ns").GPU(1).Sidecar("s", 2).InitContainer("warm", 2).Obj(), 4, nil, false},
		{"MIG slices are listed", testpod.MakePod("p", "ns").Resource(0, "nvidia.com/mig-1g.10gb", 1).Obj(), 0, []corev1.ResourceName{"nvidia.com/mig-1g.10gb"}, false},
		{"resource claims", testpod.MakePod("p", "ns").ResourceClaim("gpu", "one-gpu").Obj(), 0, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := policy.DemandOf(&tt.pod.Spec)
			if d.GPUs != tt.gpus || !slices.Equal(d.MIG, tt.mig) || d.Claims != tt.claims {
				t.Errorf("DemandOf = %+v; want GPUs %d, MIG %v, Claims %v", d, tt.gpus, tt.mig, tt.claims)
			}
		})
	}
}
