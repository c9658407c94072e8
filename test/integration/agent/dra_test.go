package agent_test

import (
	"fmt"
	"strings"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	resourcev1 "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// nodeSlice is the ResourceSlice NVIDIA's DRA driver publishes for this
// node: device gpu-<i> is the fake NVML's GPU i, by its uuid attribute.
func nodeSlice(generation int64, gpus ...int) *resourcev1.ResourceSlice {
	rs := &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: nodeName + "-gpu.nvidia.com"}, Spec: resourcev1.ResourceSliceSpec{
		Driver: policy.DriverGPU, Pool: resourcev1.ResourcePool{Name: nodeName, Generation: generation, ResourceSliceCount: 1}, NodeName: ptr.To(nodeName),
	}}
	for _, i := range gpus {
		rs.Spec.Devices = append(rs.Spec.Devices, resourcev1.Device{Name: "gpu-" + string(rune('0'+i)), Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
			"type": {StringValue: ptr.To("gpu")}, "uuid": {StringValue: ptr.To(nvmlfake.UUID(i))},
			"productName": {StringValue: ptr.To("NVIDIA H100 80GB HBM3")},
		}})
	}
	return rs
}

// GPUs that DRA allocates: kubelet lists them under the pod's claims by
// pool and device name, and the node's ResourceSlice says which GPU each
// is. The agent caps exactly those, once each though kubelet lists the
// claim for two containers, and gives them back when the pod goes.
func TestAgentCapsDRAAllocatedGPUs(t *testing.T) {
	// Devices 0-2 published; the pod gets gpu-3 and gpu-5 in the claim the
	// scheduler made for its deviceclass.resource.kubernetes.io request.
	rs := nodeSlice(1, 0, 1, 2, 3, 4, 5)
	if err := k8s.Create(t.Context(), rs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(t.Context(), rs) })
	n := newNode(t)
	n.start("2s")
	pod := testpod.MakePod("dra-0", "llm").Resource(0, policy.ResourceDRAGPU, 2).NodeName(nodeName).Limit("250").Stamp("250").Obj()
	if err := k8s.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	claim := podresourcestest.Claim("llm", "dra-0-extended-resources-x7k2p", policy.DriverGPU, nodeName, "gpu-3", "gpu-5")
	n.kubelet.SetPods(podresourcestest.Pod("llm", "dra-0",
		podresourcestest.Claims(podresourcestest.Container("worker"), claim),
		podresourcestest.Claims(podresourcestest.Container("sidecar"), claim)))
	n.limitBecomes(3, 250)
	n.limitBecomes(5, 250)
	for _, i := range []int{0, 4} {
		if got := n.limitW(i); got != 700 {
			t.Errorf("GPU %d, which the pod was not allocated, is at %d W", i, got)
		}
	}

	// The driver republishes with gpu-5 gone (a newer generation): the
	// agent cannot tell which GPU the pod's gpu-5 is, says so on the pod,
	// and changes nothing rather than give a GPU back under it.
	rs2 := nodeSlice(2, 0, 1, 2, 3, 4)
	rs2.Name += "-2"
	if err := k8s.Create(t.Context(), rs2); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(t.Context(), rs2) })
	n.eventually("a PowerLimitHeld event naming the untied device", func() (bool, string) {
		var list eventsv1.EventList
		if err := k8s.List(t.Context(), &list, client.InNamespace("llm")); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "dra-0" && e.Reason == agent.ReasonHeld && strings.Contains(e.Note, `no ResourceSlice of gpu.nvidia.com on this node lists device "gpu-5"`) {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(list.Items))
	})
	for _, i := range []int{3, 5} {
		if got := n.limitW(i); got != 250 {
			t.Errorf("GPU %d is at %d W while its pod runs; want its 250 W cap kept", i, got)
		}
	}

	if err := k8s.Delete(t.Context(), pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	n.kubelet.SetPods()
	n.limitBecomes(3, 700)
	n.limitBecomes(5, 700)
}
