package webhook_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// nvidiaGPUClass is the DeviceClass NVIDIA's DRA driver installs for whole
// GPUs, with its selector.
func nvidiaGPUClass(extendedResource *string) *resourcev1.DeviceClass {
	return &resourcev1.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: policy.DeviceClassGPU}, Spec: resourcev1.DeviceClassSpec{
		Selectors: []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{
			Expression: "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}},
		ExtendedResourceName: extendedResource,
	}}
}

// createUntilCleanup creates obj and deletes it when the test ends (with a
// context of its own: the test's has ended by then).
func createUntilCleanup[T client.Object](t *testing.T, obj T) T {
	t.Helper()
	if err := k8s.Create(t.Context(), obj); err != nil {
		t.Fatalf("create %s: %v", obj.GetName(), err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), obj) })
	return obj
}

// draNode is a node whose GPUs only DRA publishes (no device plugin, no GPU
// Feature Discovery label): two H100s, with NVIDIA's attribute names.
func draNode(t *testing.T, name string) {
	t.Helper()
	str := func(s string) resourcev1.DeviceAttribute { return resourcev1.DeviceAttribute{StringValue: ptr.To(s)} }
	var devices []resourcev1.Device
	for i, uuid := range []string{"GPU-11111111-1111-1111-1111-111111111111", "GPU-66666666-6666-6666-6666-666666666666"} {
		devices = append(devices, resourcev1.Device{Name: "gpu-" + string(rune('0'+i)), Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
			"type": str("gpu"), "uuid": str(uuid), "productName": str("NVIDIA H100 80GB HBM3"), "architecture": str("Hopper"),
		}})
	}
	createUntilCleanup(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
	createUntilCleanup(t, &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: name + "-gpu.nvidia.com"}, Spec: resourcev1.ResourceSliceSpec{
		Driver: policy.DriverGPU, Pool: resourcev1.ResourcePool{Name: name, Generation: 1, ResourceSliceCount: 1},
		NodeName: ptr.To(name), Devices: devices,
	}})
}

// gpuClaim is a ResourceClaim for gpus of NVIDIA's whole GPUs.
func gpuClaim(namespace, name string, gpus int64) *resourcev1.ResourceClaim {
	return &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}, Spec: resourcev1.ResourceClaimSpec{
		Devices: resourcev1.DeviceClaim{Requests: []resourcev1.DeviceRequest{{Name: "gpu",
			Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: policy.DeviceClassGPU, Count: gpus}}}}}}
}

// namespaceUntilCleanup creates a namespace with labels and deletes it when
// the test ends.
func namespaceUntilCleanup(t *testing.T, name string, labels map[string]string) string {
	t.Helper()
	ns := budgetNamespace(t, name, labels)
	t.Cleanup(func() {
		_ = k8s.Delete(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	})
	return ns
}

// limitedTemplatePod creates, in ns, template "one-gpu" (one whole GPU) and
// pod "limited" on it at 300 W, and returns the stored pod, stamped.
func limitedTemplatePod(t *testing.T, ns string) *corev1.Pod {
	t.Helper()
	createUntilCleanup(t, &resourcev1.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: "one-gpu", Namespace: ns},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: gpuClaim(ns, "", 1).Spec}})
	if err := createdOrDenied(t, claimPod(ns, "limited", "one-gpu").Limit("300").Obj()); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "limited"}, &pod); err != nil {
		t.Fatal(err)
	}
	if _, ok := pod.Annotations[policy.AnnotationPowerLimitValidated]; !ok {
		t.Fatalf("precondition: the pod's limit is stamped: %v", pod.Annotations)
	}
	return &pod
}

// createdOrDenied creates the pod, waiting until the webhooks' DRA view has
// what the test made: a denial that says no device is published yet is
// retried.
func createdOrDenied(t *testing.T, p *corev1.Pod) error {
	t.Helper()
	var err error
	poll.Eventually(t, 30*time.Second, "the webhooks to see the published devices", func() (bool, string) {
		err = create(t, k8s, p.DeepCopy())
		if err != nil && (strings.Contains(err.Error(), "no ResourceSlice has such a device yet") || strings.Contains(err.Error(), "has no nvidia.com/gpu.product label")) {
			return false, err.Error()
		}
		return true, ""
	})
	return err
}

// Whole GPUs through NVIDIA's DeviceClass, as extended resources the
// scheduler serves with a ResourceClaim: the webhooks see them (their
// matchConditions), count them, and check the limit against the products
// the published devices are.
func TestDRAServedGPUs(t *testing.T) {
	class := createUntilCleanup(t, nvidiaGPUClass(nil))
	draNode(t, "dra-0")

	const field = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]"
	err := createdOrDenied(t, pod("dra-too-high").Resource(0, policy.ResourceDRAGPU, 1).Limit("900").Obj())
	if want := field + `: Invalid value: "900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`; !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("900 W on a DRA H100: %v; want %q", err, want)
	}
	if err := createdOrDenied(t, pod("dra-ok").Resource(0, policy.ResourceDRAGPU, 2).Limit("300").Obj()); err != nil {
		t.Fatalf("300 W on two DRA H100s: %v", err)
	}
	if got := powerAnnotations(annotations(t, "dra-ok")); got != `limit="300" stamp="300"` {
		t.Errorf("stored pod has %s; want the limit stamped", got)
	}
	err = create(t, k8s, pod("dra-vfio").Resource(0, policy.ResourceDRAVFIO, 1).Limit("300").Obj())
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "GPUs bound to vfio-pci for a virtual machine") {
		t.Errorf("a limit on vfio passthrough GPUs: %v; want it denied, saying why", err)
	}

	// A pod without a limit or annotation still reaches both webhooks: a
	// budget charges it.
	before := admissions(t)
	if err := create(t, k8s, pod("dra-unlimited").Resource(0, policy.ResourceDRAGPU, 1).Obj()); err != nil {
		t.Fatal(err)
	}
	if got := admissions(t) - before; got != 2 {
		t.Errorf("an unlimited DRA GPU pod made %v admission calls; want 2 (mutate and validate)", got)
	}

	// nvidia.com/gpu on a DRA-only node: once the class names it its
	// extendedResourceName, the node's DRA devices bound the limit.
	class.Spec.ExtendedResourceName = ptr.To(policy.ResourceGPU)
	if err := k8s.Update(t.Context(), class); err != nil {
		t.Fatal(err)
	}
	err = createdOrDenied(t, pod("dra-plain").GPU(1).NodeName("dra-0").Limit("150").Obj())
	if want := field + `: Invalid value: "150": below the 200 W minimum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`; !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("150 W nvidia.com/gpu on a DRA node: %v; want %q", err, want)
	}

	// A class of the cluster operator's may name any extended resource:
	// one served with NVIDIA GPUs reaches the webhooks (every extended
	// resource does) and is refused a limit, and, where a budget applies,
	// refused, each saying which forms are counted.
	custom := nvidiaGPUClass(ptr.To("example.com/big-gpu"))
	custom.Name = "big-gpu.example.com"
	createUntilCleanup(t, custom)
	var denied error
	attempt := 0
	poll.Eventually(t, 30*time.Second, "the webhooks to see the class", func() (bool, string) {
		attempt++ // a pod admitted before the webhooks saw the class keeps its name
		denied = create(t, k8s, pod(fmt.Sprintf("custom-limited-%d", attempt)).Resource(0, "example.com/big-gpu", 1).Limit("300").Obj())
		return denied != nil, "admitted"
	})
	if want := `the pod requests example.com/big-gpu, which a DeviceClass serves with NVIDIA GPUs through DRA (its extendedResourceName)`; !apierrors.IsInvalid(denied) || !strings.Contains(denied.Error(), want) {
		t.Errorf("a limit on a custom class's resource: %v; want %q", denied, want)
	}
	ns := namespaceUntilCleanup(t, "dra-custom-budgeted", map[string]string{"dra-custom-budget": "on"})
	createBudget(t, "dra-custom-budget", 10000, "dra-custom-budget", "on")
	attempt = 0
	poll.Eventually(t, 30*time.Second, "the webhooks to see the budget", func() (bool, string) {
		attempt++ // a pod admitted before the webhooks saw the budget keeps its name
		denied = create(t, k8s, testpod.MakePod(fmt.Sprintf("custom-unlimited-%d", attempt), ns).Resource(0, "example.com/big-gpu", 1).Obj())
		return denied != nil, "admitted"
	})
	if want := `the GPUs the pod may get through its example.com/big-gpu request (a DeviceClass serves it with NVIDIA GPUs through DRA) cannot be charged`; !apierrors.IsForbidden(denied) || !strings.Contains(denied.Error(), want) {
		t.Errorf("a custom class's resource in a budgeted namespace: %v; want %q", denied, want)
	}
	if err := create(t, k8s, testpod.MakePod("other-device", ns).Resource(0, "rdma.example.com/hca", 1).Obj()); err != nil {
		t.Errorf("an extended resource no class serves, in a budgeted namespace: %v; want admitted", err)
	}
}

// claimPod asks for its GPUs through a ResourceClaim made from template,
// which its container uses.
func claimPod(namespace, name, template string) *testpod.Wrapper {
	w := testpod.MakePod(name, namespace).ResourceClaim("gpus", template)
	w.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpus"}}
	return w
}

// GPUs a pod asks for through a ResourceClaimTemplate: the webhook reads the
// template at admission and checks the limit against the products of the
// devices its request can get; a template that does not exist, and a
// budget that would not charge the GPUs, are refused, saying why.
func TestDRAClaimTemplates(t *testing.T) {
	createUntilCleanup(t, nvidiaGPUClass(nil))
	draNode(t, "dra-1")
	tmpl := &resourcev1.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: "two-gpus", Namespace: testNamespace},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: resourcev1.ResourceClaimSpec{Devices: resourcev1.DeviceClaim{
			Requests: []resourcev1.DeviceRequest{{Name: "gpu", Exactly: &resourcev1.ExactDeviceRequest{DeviceClassName: policy.DeviceClassGPU, Count: 2}}},
		}}}}
	createUntilCleanup(t, tmpl)

	const field = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]"
	err := createdOrDenied(t, claimPod(testNamespace, "claim-too-high", "two-gpus").Limit("900").Obj())
	if want := field + `: Invalid value: "900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`; !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("900 W on the template's two H100s: %v; want %q", err, want)
	}
	if err := create(t, k8s, claimPod(testNamespace, "claim-ok", "two-gpus").Limit("300").Obj()); err != nil {
		t.Fatalf("300 W on the template's two H100s: %v", err)
	}
	if got := powerAnnotations(annotations(t, "claim-ok")); got != `limit="300" stamp="300"` {
		t.Errorf("stored pod has %s; want the limit stamped", got)
	}
	err = create(t, k8s, claimPod(testNamespace, "claim-missing", "no-such-template").Limit("300").Obj())
	if want := `claim "gpus" (ResourceClaimTemplate "no-such-template"): not found in namespace "` + testNamespace + `": create it before the pod`; !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("a limit with a missing template: %v; want %q", err, want)
	}

	// Where a budget applies, the claims' GPUs are charged: a template's to
	// its pod, a named claim's once, to the claim, however many pods use it.
	// Claims whose GPUs cannot be counted are refused there.
	ns := namespaceUntilCleanup(t, "dra-budgeted", map[string]string{"dra-budget": "on"})
	budgetTmpl := tmpl.DeepCopy()
	budgetTmpl.Namespace, budgetTmpl.ResourceVersion = ns, ""
	createUntilCleanup(t, budgetTmpl)
	shared := &resourcev1.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Name: "shared", Namespace: ns}, Spec: tmpl.Spec.Spec}
	createUntilCleanup(t, shared)
	createBudget(t, "dra-budget", 1200, "dra-budget", "on")
	var denied error
	attempt := 0
	eventually(t, "the budget to select the namespace", func() (bool, string) {
		attempt++ // a pod admitted before the webhooks saw the budget keeps its name
		denied = create(t, k8s, claimPod(ns, fmt.Sprintf("claim-uncountable-%d", attempt), "no-such-template").Obj())
		return denied != nil, "admitted"
	})
	if want := `GPU power budget "dra-budget" selects the namespace, and the GPUs the pod may get through its resourceClaims (claim "gpus" (ResourceClaimTemplate "no-such-template"): not found`; !apierrors.IsForbidden(denied) || !strings.Contains(denied.Error(), want) {
		t.Errorf("claims that cannot be counted in a budgeted namespace: %v; want %q", denied, want)
	}
	sharer := func(name, limit string) *corev1.Pod {
		return testpod.MakePod(name, ns).NamedClaim("gpus", "shared").Limit(limit).Obj()
	}
	for _, p := range []*corev1.Pod{claimPod(ns, "own-claim", "two-gpus").Limit("300").Obj(), sharer("sharer-1", "300"), sharer("sharer-2", "300")} {
		if err := create(t, k8s, p); err != nil {
			t.Fatalf("%s in a budget with room for the template's claim and the shared one: %v", p.Name, err)
		}
	}
	var stored corev1.Pod
	if err := k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "sharer-1"}, &stored); err != nil {
		t.Fatal(err)
	}
	if got := stored.Annotations[policy.AnnotationClaimGPUs]; got != "gpus=2" {
		t.Errorf("stored claim pod carries claim GPUs %q; want gpus=2", got)
	}
	committedBecomes(t, "dra-budget", 1200)
	if st := getBudget(t, "dra-budget").Status; st.Pods != 3 || st.GPUs != 4 {
		t.Errorf("budget counts %d pods and %d GPUs; want 3 pods on 4 GPUs (the shared claim's 2 once)", st.Pods, st.GPUs)
	}
	err = create(t, k8s, sharer("sharer-higher", "350"))
	if want := budgetDenial("dra-budget", "100 W more (now 700 W (2 GPUs x 350 W))", 1200, 1200); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("a sharer at a higher limit: %v; want %q", err, want)
	}
	// The counts are the webhook's alone: an update that lowers them gets
	// them back from the mutating webhook.
	forged := stored.DeepCopy()
	forged.Annotations[policy.AnnotationClaimGPUs] = "gpus=1"
	if err := k8s.Update(t.Context(), forged); err != nil {
		t.Fatal(err)
	}
	if got := annotationsIn(t, ns, "sharer-1")[policy.AnnotationClaimGPUs]; got != "gpus=2" {
		t.Errorf("after an update lowering them, the claim GPUs are %q; want gpus=2 kept", got)
	}
	// Another DeviceClass's resource reaches the webhooks (matchConditions)
	// and is refused there too: budgets do not know what serves it.
	err = create(t, k8s, testpod.MakePod("custom-class", ns).Resource(0, "deviceclass.resource.kubernetes.io/h200-only.example.com", 1).Obj())
	if want := `the GPUs the pod may get through its deviceclass.resource.kubernetes.io/h200-only.example.com request cannot be charged to budgets`; !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("another DeviceClass's resource in a budgeted namespace: %v; want %q", err, want)
	}
}

// A claim is bound to its pods only when it is allocated. One made again
// under the name its pods were admitted against (a named claim deleted
// while its pod waits), or made from a template replaced before the
// controller copied it, may not give them more GPUs than their admission
// counted (the budget charges no more), nor, to a pod with a limit,
// devices a limit may not reach.
func TestClaimReplacedUnderItsPods(t *testing.T) {
	createUntilCleanup(t, nvidiaGPUClass(nil))
	draNode(t, "dra-swap")
	// Admin access, which the API server allows only in a namespace so
	// labelled, is one of the swaps tried.
	ns := namespaceUntilCleanup(t, "dra-swap", map[string]string{"dra-swap-budget": "on", "resource.kubernetes.io/admin-access": "true"})
	claimOf := func(name string, gpus int64) *resourcev1.ResourceClaim { return gpuClaim(ns, name, gpus) }
	if err := k8s.Create(t.Context(), claimOf("swap", 1)); err != nil {
		t.Fatal(err)
	}
	one := &resourcev1.ResourceClaimTemplate{ObjectMeta: metav1.ObjectMeta{Name: "one-gpu", Namespace: ns},
		Spec: resourcev1.ResourceClaimTemplateSpec{Spec: claimOf("", 1).Spec}}
	createUntilCleanup(t, one)
	createBudget(t, "dra-swap-budget", 1200, "dra-swap-budget", "on")
	attempt := 0
	eventually(t, "the budget to select the namespace", func() (bool, string) {
		attempt++
		err := create(t, k8s, claimPod(ns, fmt.Sprintf("probe-%d", attempt), "no-such-template").Obj())
		return err != nil, "admitted"
	})

	// A pod waiting (gated) on a 1-GPU named claim at 300 W.
	gated := testpod.MakePod("gated", ns).NamedClaim("gpus", "swap").Limit("300")
	gated.Spec.Containers[0].Resources.Claims = []corev1.ResourceClaim{{Name: "gpus"}}
	gated.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "example.com/hold"}}
	if err := createdOrDenied(t, gated.Obj()); err != nil {
		t.Fatalf("gated pod on a 1-GPU claim at 300 W: %v", err)
	}
	committedBecomes(t, "dra-swap-budget", 300)
	if err := k8s.Delete(t.Context(), claimOf("swap", 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the claim to be gone", func() (bool, string) {
		err := k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "swap"}, &resourcev1.ResourceClaim{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	err := k8s.Create(t.Context(), claimOf("swap", 2))
	if want := `ResourceClaim "swap" is not the claim its pods were admitted against: pod ` + ns + `/gated was admitted for 1 GPUs of it, and this claim can get 2`; !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("the claim made again with 2 GPUs: %v; want %q", err, want)
	}
	admin := claimOf("swap", 1)
	admin.Spec.Devices.Requests[0].Exactly.AdminAccess = ptr.To(true)
	if err := k8s.Create(t.Context(), admin); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "has a power limit admitted for whole GPUs, and this claim asks for admin access") {
		t.Errorf("the claim made again with admin access: %v; want refused", err)
	}
	if err := k8s.Create(t.Context(), claimOf("swap", 1)); err != nil {
		t.Errorf("the claim made again as it was: %v", err)
	}

	// The controller's claim from a template that now asks for more than
	// the pod was admitted for (made here as the controller makes it).
	var templated corev1.Pod
	if err := k8s.Create(t.Context(), claimPod(ns, "templated", "one-gpu").Limit("300").Obj()); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "templated"}, &templated); err != nil {
		t.Fatal(err)
	}
	made := func(gpus int64) *resourcev1.ResourceClaim {
		c := claimOf("templated-gpus-x1", gpus)
		c.Annotations = map[string]string{"resource.kubernetes.io/pod-claim-name": "gpus"}
		c.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "templated", UID: templated.UID, Controller: ptr.To(true)}}
		return c
	}
	err = k8s.Create(t.Context(), made(2))
	if want := `pod ` + ns + `/templated was admitted for 1 GPUs of it, and this claim can get 2`; !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("the template's claim with 2 GPUs: %v; want %q", err, want)
	}
	if err := k8s.Create(t.Context(), made(1)); err != nil {
		t.Errorf("the template's claim as admitted: %v", err)
	}

	// A claim for a pod's extended resources, as the scheduler makes it
	// (and takes one it finds): held to the GPUs the pod requests.
	if err := k8s.Create(t.Context(), testpod.MakePod("extended", ns).Resource(0, policy.ResourceDRAGPU, 1).Limit("300").Obj()); err != nil {
		t.Fatal(err)
	}
	var extended corev1.Pod
	if err := k8s.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "extended"}, &extended); err != nil {
		t.Fatal(err)
	}
	forExtended := func(name string, gpus int64) *resourcev1.ResourceClaim {
		c := claimOf(name, gpus)
		c.Annotations = map[string]string{"resource.kubernetes.io/extended-resource-claim": "true"}
		c.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: "extended", UID: extended.UID, Controller: ptr.To(true)}}
		return c
	}
	err = k8s.Create(t.Context(), forExtended("extended-resources-x1", 4))
	if want := `pod ` + ns + `/extended was admitted for 1 GPUs of it, and this claim can get 4`; !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Errorf("an extended-resource claim with 4 GPUs for a 1-GPU pod: %v; want %q", err, want)
	}
	if err := k8s.Create(t.Context(), forExtended("extended-resources-x2", 1)); err != nil {
		t.Errorf("the extended-resource claim as requested: %v", err)
	}

	// Where nothing was admitted against it, a claim is anyone's to make:
	// a pod without a limit, in a namespace no budget selects, made first.
	if err := create(t, k8s, testpod.MakePod("before-its-claim", testNamespace).NamedClaim("gpus", "later").Obj()); err != nil {
		t.Fatal(err)
	}
	later := claimOf("later", 4)
	later.Namespace = testNamespace
	createUntilCleanup(t, later)
}
