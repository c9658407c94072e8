package e2enode_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// draGPUPod asks for one GPU of NVIDIA's DeviceClass as an extended
// resource: the scheduler makes and allocates a ResourceClaim for it, the
// fake DRA driver prepares it, and the kubelet lists the device under the
// pod's dynamic_resources.
func draGPUPod(name, watts string) *corev1.Pod {
	p := gpuPod(name, watts)
	p.Spec.InitContainers = nil
	p.Spec.Containers[0].Resources = corev1.ResourceRequirements{
		Limits: corev1.ResourceList{policy.ResourceDRAGPU: resource.MustParse("1")},
	}
	return p
}

// allocatedGPU is the simulated GPU the scheduler allocated the pod's
// extended-resource claim: the device's index, from its name gpu-<index>.
func allocatedGPU(t *testing.T, p *corev1.Pod) (string, bool, string) {
	t.Helper()
	got, err := cluster.Client.CoreV1().Pods(p.Namespace).Get(t.Context(), p.Name, metav1.GetOptions{})
	if err != nil {
		return "", false, err.Error()
	}
	st := got.Status.ExtendedResourceClaimStatus
	if st == nil || st.ResourceClaimName == "" {
		return "", false, "no extended-resource claim yet"
	}
	claim, err := cluster.Client.ResourceV1().ResourceClaims(p.Namespace).Get(t.Context(), st.ResourceClaimName, metav1.GetOptions{})
	if err != nil {
		return "", false, err.Error()
	}
	if claim.Status.Allocation == nil || len(claim.Status.Allocation.Devices.Results) != 1 {
		return "", false, "claim " + claim.Name + " not allocated"
	}
	r := claim.Status.Allocation.Devices.Results[0]
	index, err := strconv.Atoi(strings.TrimPrefix(r.Device, "gpu-"))
	if r.Driver != policy.DriverGPU || err != nil {
		t.Fatalf("claim %s allocated %s/%s/%s; want a gpu-<index> of %s", claim.Name, r.Driver, r.Pool, r.Device, policy.DriverGPU)
	}
	return nvmlfake.UUID(index), true, ""
}

// TestDRAAllocatedGPUCappedAndRestored: a pod that gets its GPU from DRA
// (NVIDIA's DeviceClass resource) is admitted against the product the
// driver publishes, and the agent caps exactly the GPU the scheduler
// allocated its claim, found through PodResources' dynamic_resources and the
// node's ResourceSlice; the GPU gets its limit back when the pod goes.
func TestDRAAllocatedGPUCappedAndRestored(t *testing.T) {
	install(t)
	if cluster.State.DRAGPUs == 0 {
		t.Fatal("the cluster publishes no DRA GPUs: start it with DRA_GPUS=2 (make cluster-up) or let the suite start its own")
	}
	before := limits(t)
	// The webhook checks the limit against what the driver publishes.
	denied := draGPUPod("dra-too-high", "900")
	if _, err := cluster.Client.CoreV1().Pods("default").Create(t.Context(), denied, metav1.CreateOptions{}); err == nil ||
		!strings.Contains(err.Error(), "above the 700 W maximum of NVIDIA-H100-80GB-HBM3") {
		t.Fatalf("900 W on a DRA H100: %v; want it denied against the H100's maximum", err)
	}

	pod := createPod(t, draGPUPod("dra-capped", "275"))
	t.Cleanup(func() { deletePod(t, pod) })
	var uuid string
	eventually(t, "the claim allocated and its GPU capped at 275 W", func() (bool, string) {
		var ok bool
		var why string
		if uuid, ok, why = allocatedGPU(t, pod); !ok {
			return false, why
		}
		return limits(t)[uuid] == 275, fmt.Sprintf("%s at %d W; all: %v", uuid, limits(t)[uuid], limits(t))
	})
	t.Logf("the scheduler allocated GPU %s to the pod's claim; capped at 275 W", uuid)
	for other, w := range limits(t) {
		if other != uuid && w != before[other] {
			t.Errorf("GPU %s, not the pod's, went from %d W to %d W", other, before[other], w)
		}
	}
	if got := getPod(t, pod.Name).Annotations[policy.AnnotationPowerLimitValidated]; got != "275" {
		t.Errorf("stamp %q; want the admitted 275", got)
	}

	deletePod(t, pod)
	eventually(t, "the DRA GPU restored after the pod is gone", func() (bool, string) {
		return limits(t)[uuid] == before[uuid], fmt.Sprintf("%d W, want %d W", limits(t)[uuid], before[uuid])
	})
}
