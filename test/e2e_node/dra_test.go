package e2enode_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
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
	requireDRAGPUs(t)
	deniedAboveH100Maximum(t, draGPUPod("dra-too-high", "900"))
	allocatedGPUCappedThenRestored(t, draGPUPod("dra-capped", "275"), 275)
}

// TestDRAServesPlainGPUPod: on a node as NVIDIA's DRA driver alone makes it
// (no device plugin GPU, no product label), a plain nvidia.com/gpu: 1 pod is
// served through DRA, because NVIDIA's DeviceClass names nvidia.com/gpu its
// extendedResourceName: the scheduler makes the pod a claim of its own and
// allocates it a DRA device. The webhook checks the limit against the
// product the driver publishes (there is no other to check it against), the
// agent caps exactly the device allocated, and restores it when the pod
// goes.
func TestDRAServesPlainGPUPod(t *testing.T) {
	install(t)
	requireDRAGPUs(t)
	draOnlyNode(t)
	plain := func(name, watts string) *corev1.Pod {
		p := gpuPod(name, watts)
		p.Spec.InitContainers = nil
		return p
	}
	deniedAboveH100Maximum(t, plain("dra-plain-too-high", "900"))
	allocatedGPUCappedThenRestored(t, plain("dra-plain", "275"), 275)
}

func requireDRAGPUs(t *testing.T) {
	t.Helper()
	if cluster.State.DRAGPUs == 0 {
		t.Fatal("the cluster publishes no DRA GPUs: start it with DRA_GPUS=2 (make cluster-up) or let the suite start its own")
	}
}

// draOnlyNode makes the node, until the test ends, look like one where
// NVIDIA's DRA driver runs without the device plugin and GPU Feature
// Discovery: no product label, NVIDIA's DeviceClass naming nvidia.com/gpu
// its extendedResourceName (as NVIDIA's own does), and the fake device
// plugin's GPUs withdrawn: the scheduler serves nvidia.com/gpu through DRA
// on a node whose allocatable has none. The withdrawal goes last: the
// kubelet takes up to 10 s to report it, long enough for the webhook
// replicas to see the label and the class before the pods come.
func draOnlyNode(t *testing.T) {
	t.Helper()
	patchNode := func(patch string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := cluster.Client.CoreV1().Nodes().Patch(ctx, realnode.NodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			return err
		}
	}
	patchClass := func(patch string) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := cluster.Client.ResourceV1().DeviceClasses().Patch(ctx, policy.DeviceClassGPU, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
			return err
		}
	}
	// Each undo is registered before its change: one that fails half-way
	// is undone too.
	change := func(what string, do, undo func(context.Context) error) {
		t.Cleanup(func() {
			if err := undo(context.Background()); err != nil {
				t.Errorf("undo %s: %v", what, err)
			}
		})
		if err := do(t.Context()); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	change("remove the node's product label",
		patchNode(fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, policy.LabelGPUProduct)),
		patchNode(fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, policy.LabelGPUProduct, realnode.GPUProduct)))
	change("name "+policy.ResourceGPU+" in DeviceClass "+policy.DeviceClassGPU,
		patchClass(fmt.Sprintf(`{"spec":{"extendedResourceName":%q}}`, policy.ResourceGPU)),
		patchClass(`{"spec":{"extendedResourceName":null}}`))
	change("withdraw the device plugin's GPUs", cluster.WithdrawDevicePluginGPUs, cluster.RestoreDevicePluginGPUs)
}

// deniedAboveH100Maximum checks that the webhook denies p for its limit
// above the H100's maximum, once it has seen what the test changed: until
// then it may deny for another reason.
func deniedAboveH100Maximum(t *testing.T, p *corev1.Pod) {
	t.Helper()
	const want = "above the 700 W maximum of NVIDIA-H100-80GB-HBM3"
	eventually(t, fmt.Sprintf("%s denied %s", p.Name, want), func() (bool, string) {
		_, err := cluster.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{})
		if err == nil {
			deletePod(t, p)
			t.Fatalf("%s at %s W admitted; want it denied against the H100's maximum", p.Name, p.Annotations[policy.AnnotationPowerLimit])
		}
		return strings.Contains(err.Error(), want), err.Error()
	})
}

// allocatedGPUCappedThenRestored creates p, whose GPU comes from DRA as an
// extended resource, waits until the GPU the scheduler allocated its claim
// is capped at watts and checks that no other GPU changed, then deletes p
// and waits until the GPU is back where it was.
func allocatedGPUCappedThenRestored(t *testing.T, p *corev1.Pod, watts int) {
	t.Helper()
	before := limits(t)
	pod := createPod(t, p)
	t.Cleanup(func() { deletePod(t, pod) })
	var uuid string
	eventually(t, fmt.Sprintf("the claim allocated and its GPU capped at %d W", watts), func() (bool, string) {
		var ok bool
		var why string
		if uuid, ok, why = allocatedGPU(t, pod); !ok {
			return false, why
		}
		return limits(t)[uuid] == watts, fmt.Sprintf("%s at %d W; all: %v", uuid, limits(t)[uuid], limits(t))
	})
	t.Logf("the scheduler allocated GPU %s to the pod's claim; capped at %d W", uuid, watts)
	for other, w := range limits(t) {
		if other != uuid && w != before[other] {
			t.Errorf("GPU %s, not the pod's, went from %d W to %d W", other, before[other], w)
		}
	}
	if got, want := getPod(t, pod.Name).Annotations[policy.AnnotationPowerLimitValidated], strconv.Itoa(watts); got != want {
		t.Errorf("stamp %q; want the admitted %s", got, want)
	}

	deletePod(t, pod)
	eventually(t, "the DRA GPU restored after the pod is gone", func() (bool, string) {
		return limits(t)[uuid] == before[uuid], fmt.Sprintf("%d W, want %d W", limits(t)[uuid], before[uuid])
	})
}

// claimGPUs are the simulated GPUs the scheduler allocated a claim, from its
// devices' names (gpu-<index>).
func claimGPUs(t *testing.T, namespace, name string) ([]string, string) {
	t.Helper()
	claim, err := cluster.Client.ResourceV1().ResourceClaims(namespace).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		return nil, err.Error()
	}
	if claim.Status.Allocation == nil {
		return nil, "claim " + name + " not allocated"
	}
	var uuids []string
	for _, r := range claim.Status.Allocation.Devices.Results {
		index, err := strconv.Atoi(strings.TrimPrefix(r.Device, "gpu-"))
		if r.Driver != policy.DriverGPU || err != nil {
			t.Fatalf("claim %s allocated %s/%s; want a gpu-<index> of %s", name, r.Driver, r.Device, policy.DriverGPU)
		}
		uuids = append(uuids, nvmlfake.UUID(index))
	}
	return uuids, ""
}

// generatedClaim is the name of the claim the controller made for a pod's
// claim from its template, as the pod's status records it.
func generatedClaim(t *testing.T, p *corev1.Pod, claim string) (string, string) {
	t.Helper()
	got, err := cluster.Client.CoreV1().Pods(p.Namespace).Get(t.Context(), p.Name, metav1.GetOptions{})
	if err != nil {
		return "", err.Error()
	}
	for _, s := range got.Status.ResourceClaimStatuses {
		if s.Name == claim && s.ResourceClaimName != nil {
			return *s.ResourceClaimName, ""
		}
	}
	return "", "no claim generated yet"
}

// capsFollowClaim waits until exactly the GPUs of the claim are at watts,
// the other GPUs as before, and returns the claim's GPUs.
func capsFollowClaim(t *testing.T, namespace string, claimName func() (string, string), watts int, before map[string]int) []string {
	t.Helper()
	var uuids []string
	eventually(t, fmt.Sprintf("the claim's GPUs capped at %d W", watts), func() (bool, string) {
		name, why := claimName()
		if name == "" {
			return false, why
		}
		if uuids, why = claimGPUs(t, namespace, name); uuids == nil {
			return false, why
		}
		now := limits(t)
		for uuid, w := range now {
			if want := before[uuid]; slices.Contains(uuids, uuid) {
				want = watts
				if w != want {
					return false, fmt.Sprintf("%s at %d W; all: %v", uuid, w, now)
				}
			} else if w != want {
				return false, fmt.Sprintf("%s, not the claim's, at %d W (was %d W)", uuid, w, want)
			}
		}
		return true, ""
	})
	t.Logf("claim's GPUs %v capped at %d W", uuids, watts)
	return uuids
}

func restored(t *testing.T, uuids []string, before map[string]int) {
	t.Helper()
	eventually(t, "the claim's GPUs restored after the pod is gone", func() (bool, string) {
		for _, uuid := range uuids {
			if limits(t)[uuid] != before[uuid] {
				return false, fmt.Sprintf("%s at %d W, want %d W", uuid, limits(t)[uuid], before[uuid])
			}
		}
		return true, ""
	})
}

// applyUntilCleanup applies obj (in the default namespace when it is
// namespaced and names none) with kubectl, and deletes it when the test
// ends.
func applyUntilCleanup(t *testing.T, obj map[string]any, resource, name string) {
	t.Helper()
	y, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, string(y), "apply", "-f", "-")
	ns := "default"
	if meta, ok := obj["metadata"].(map[string]any); ok && meta["namespace"] != nil {
		ns = meta["namespace"].(string)
	}
	t.Cleanup(func() {
		_, _ = cluster.Kubectl(context.Background(), "", "delete", resource, name, "-n", ns, "--ignore-not-found")
	})
}

// claimsPod is a pod whose containers use one ResourceClaim, at a limit.
func claimsPod(name, watts string, claim corev1.PodResourceClaim, containers ...string) *corev1.Pod {
	p := gpuPod(name, watts)
	p.Spec.InitContainers = nil
	main := p.Spec.Containers[0]
	main.Resources = corev1.ResourceRequirements{Claims: []corev1.ResourceClaim{{Name: claim.Name}}}
	p.Spec.Containers = nil
	for _, c := range containers {
		main.Name = c
		p.Spec.Containers = append(p.Spec.Containers, main)
	}
	p.Spec.ResourceClaims = []corev1.PodResourceClaim{claim}
	return p
}

// capsThenRestores creates p, waits until exactly the GPUs of its claim are
// at watts, checks there are want of them, deletes p and waits until they
// are back where they were.
func capsThenRestores(t *testing.T, p *corev1.Pod, claimName func(pod *corev1.Pod) (string, string), watts, want int) {
	t.Helper()
	before := limits(t)
	pod := createPod(t, p)
	t.Cleanup(func() { deletePod(t, pod) })
	uuids := capsFollowClaim(t, pod.Namespace, func() (string, string) { return claimName(pod) }, watts, before)
	if len(uuids) != want {
		t.Errorf("the claim got %d GPUs; want %d", len(uuids), want)
	}
	deletePod(t, pod)
	restored(t, uuids, before)
}

// TestDRAClaimTemplateWithTwoGPUs: a pod whose ResourceClaimTemplate asks
// for two GPUs is admitted against the published product; the controller
// makes its claim, the scheduler allocates two devices, and the agent caps
// exactly those two, and restores them when the pod goes.
func TestDRAClaimTemplateWithTwoGPUs(t *testing.T) {
	install(t)
	tmpl := map[string]any{
		"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
		"metadata": map[string]any{"name": "two-gpus", "namespace": "default"},
		"spec": map[string]any{"spec": map[string]any{"devices": map[string]any{"requests": []any{
			map[string]any{"name": "gpu", "exactly": map[string]any{"deviceClassName": policy.DeviceClassGPU, "count": 2}},
		}}}},
	}
	applyUntilCleanup(t, tmpl, "resourceclaimtemplate", "two-gpus")
	p := claimsPod("claim-template", "260", corev1.PodResourceClaim{Name: "gpus", ResourceClaimTemplateName: ptr.To("two-gpus")}, "main")
	capsThenRestores(t, p, func(pod *corev1.Pod) (string, string) { return generatedClaim(t, pod, "gpus") }, 260, 2)
}

// TestDRANamedClaimInTwoContainers: one ResourceClaim that both containers
// of a pod use; kubelet lists its device for each, and the agent caps the
// one GPU once.
func TestDRANamedClaimInTwoContainers(t *testing.T) {
	install(t)
	claim := map[string]any{
		"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
		"metadata": map[string]any{"name": "shared-gpu", "namespace": "default"},
		"spec": map[string]any{"devices": map[string]any{"requests": []any{
			map[string]any{"name": "gpu", "exactly": map[string]any{"deviceClassName": policy.DeviceClassGPU}},
		}}},
	}
	applyUntilCleanup(t, claim, "resourceclaim", "shared-gpu")
	p := claimsPod("claim-shared", "240", corev1.PodResourceClaim{Name: "gpu", ResourceClaimName: ptr.To("shared-gpu")}, "main", "sidecar")
	capsThenRestores(t, p, func(*corev1.Pod) (string, string) { return "shared-gpu", "" }, 240, 1)
}

// TestDRAGPUsOverBudgetDenied: GPUs asked for through NVIDIA's DeviceClass
// resource are charged to a budget like nvidia.com/gpu: a pod over it is
// denied with the planner-facing message.
func TestDRAGPUsOverBudgetDenied(t *testing.T) {
	install(t)
	ns := "dra-budgeted"
	budgetedNamespace(t, ns, "dra", 500)
	over := draGPUPod("dra-over", "300")
	over.Namespace = ns
	over.Spec.Containers[0].Resources.Limits[policy.ResourceDRAGPU] = resource.MustParse("2")
	var denied error
	eventually(t, "the webhooks to see the budget", func() (bool, string) {
		_, denied = cluster.Client.CoreV1().Pods(ns).Create(t.Context(), over, metav1.CreateOptions{})
		if denied == nil {
			deletePod(t, over) // admitted before the budget was seen
		}
		return denied != nil, "admitted"
	})
	if want := `exceeded GPU power budget "dra": requested 600 W (2 GPUs x 300 W), committed 0 W of 500 W, available 500 W`; !strings.Contains(denied.Error(), want) {
		t.Errorf("two DRA GPUs at 300 W under a 500 W budget: %v; want %q", denied, want)
	}
}

// TestDRASharedClaimChargedOnce: a named ResourceClaim that two pods use is
// one GPU, and its budget charges it once, at the pods' limit; a pod that
// would take the budget over is denied, and the one GPU is capped for both
// pods and restored when they go.
func TestDRASharedClaimChargedOnce(t *testing.T) {
	install(t)
	ns := "dra-shared"
	budgetedNamespace(t, ns, "dra-shared", 600)
	applyUntilCleanup(t, map[string]any{
		"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
		"metadata": map[string]any{"name": "shared-gpu", "namespace": ns},
		"spec": map[string]any{"devices": map[string]any{"requests": []any{
			map[string]any{"name": "gpu", "exactly": map[string]any{"deviceClassName": policy.DeviceClassGPU}},
		}}},
	}, "resourceclaim", "shared-gpu")
	// 900 W asked of a 600 W budget: denied once the webhooks see it.
	probe := draGPUPod("dra-probe", "300")
	probe.Namespace = ns
	probe.Spec.Containers[0].Resources.Limits[policy.ResourceDRAGPU] = resource.MustParse("3")
	eventually(t, "the webhooks to see the budget", func() (bool, string) {
		_, err := cluster.Client.CoreV1().Pods(ns).Create(t.Context(), probe, metav1.CreateOptions{})
		if err == nil {
			deletePod(t, probe) // admitted before the budget was seen
		}
		return err != nil, "admitted"
	})

	before := limits(t)
	var sharers []*corev1.Pod
	for _, name := range []string{"sharer-1", "sharer-2"} {
		p := claimsPod(name, "300", corev1.PodResourceClaim{Name: "gpu", ResourceClaimName: ptr.To("shared-gpu")}, "main")
		p.Namespace = ns
		pod := createPod(t, p)
		t.Cleanup(func() { deletePod(t, pod) })
		sharers = append(sharers, pod)
	}
	uuids := capsFollowClaim(t, ns, func() (string, string) { return "shared-gpu", "" }, 300, before)
	if len(uuids) != 1 {
		t.Fatalf("the shared claim got %d GPUs; want 1", len(uuids))
	}
	status := func() string {
		return kubectl(t, "", "get", "gpupowerbudget", "dra-shared", "-o", "jsonpath={.status.committedWatts} {.status.pods} {.status.gpus}")
	}
	eventually(t, "the budget to charge the claim once", func() (bool, string) {
		got := strings.TrimSpace(status())
		return got == "300 2 1", "committed, pods, GPUs: " + got
	})
	over := draGPUPod("dra-over-shared", "300")
	over.Namespace = ns
	over.Spec.Containers[0].Resources.Limits[policy.ResourceDRAGPU] = resource.MustParse("2")
	_, err := cluster.Client.CoreV1().Pods(ns).Create(t.Context(), over, metav1.CreateOptions{})
	if want := `exceeded GPU power budget "dra-shared": requested 600 W (2 GPUs x 300 W), committed 300 W of 600 W, available 300 W`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("two more GPUs at 300 W beside the shared claim: %v; want %q", err, want)
	}
	for _, p := range sharers {
		deletePod(t, p)
	}
	restored(t, uuids, before)
	eventually(t, "the budget to release the claim", func() (bool, string) {
		got := strings.TrimSpace(status())
		return got == "0 0 0", "committed, pods, GPUs: " + got
	})
}
