package e2e_test

// The admission integrity suite: each case is an attack a tenant with the
// ordinary rights to create and change pods in their own namespace can try,
// run black-box against the real API server with the shipped webhook
// configurations (docs/install.md, "Threat model"). Each asserts what the
// tenant sees (the denial) and what the operator sees (the budget status).
// The file sorts before uninstall_test.go, which removes the webhook.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
)

// tenantNamespace creates a namespace labelled for its own budgets and
// returns its name.
func tenantNamespace(t *testing.T, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"security-suite": name}}}
	if err := sb.Client.Create(t.Context(), ns); err != nil {
		t.Fatal(err)
	}
	return name
}

// budgetFor creates a budget of total watts selecting only namespace ns.
func budgetFor(t *testing.T, name, ns string, total int64) {
	t.Helper()
	b := &powerv1alpha1.GPUPowerBudget{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: powerv1alpha1.GPUPowerBudgetSpec{
		TotalWatts: total, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"security-suite": ns}},
	}}
	if err := sb.Client.Create(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Client.Delete(context.Background(), b) })
	waitBudget(t, name, "reconciled", func(st powerv1alpha1.GPUPowerBudgetStatus) bool { return st.ObservedGeneration > 0 })
}

func waitBudget(t *testing.T, name, what string, ok func(powerv1alpha1.GPUPowerBudgetStatus) bool) powerv1alpha1.GPUPowerBudgetStatus {
	t.Helper()
	var b powerv1alpha1.GPUPowerBudget
	poll.Eventually(t, time.Minute, "budget "+name+" "+what, func() (bool, string) {
		if err := sb.Client.Get(t.Context(), types.NamespacedName{Name: name}, &b); err != nil {
			return false, err.Error()
		}
		return ok(b.Status), fmt.Sprintf("status %+v", b.Status)
	})
	return b.Status
}

// unboundPod is a GPU pod on no node: admission judges it against the
// cluster's GPU products, and no simulated GPU is taken.
func unboundPod(name, ns, gpus, limit string) *corev1.Pod {
	q := resource.MustParse(gpus)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "worker", Image: "nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.4.0",
			Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{policy.ResourceGPU: q}},
		}}},
	}
	if limit != "" {
		pod.Annotations = map[string]string{policy.AnnotationPowerLimit: limit}
	}
	return pod
}

func create(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if err := sb.Client.Create(t.Context(), pod); err != nil {
		t.Fatalf("create %s: %v", pod.Name, err)
	}
	t.Cleanup(func() { _ = sb.Client.Delete(context.Background(), pod, client.GracePeriodSeconds(0)) })
}

func denied(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v; want a denial containing %q", err, want)
	}
}

// A GPU count whose cost wraps int64 (20e15 GPUs x 250 W) used to leave a
// budget committed at a negative number and admit anything after it.
func TestSecurityGPUCountOverflow(t *testing.T) {
	ns := tenantNamespace(t, "sec-overflow")
	budgetFor(t, "sec-overflow", ns, 1400)
	for _, tc := range []struct{ name, gpus, limit string }{
		{"wraps-with-limit", "20e15", "250"},
		{"wraps-unlimited", "20e15", ""},
		{"past-int64", "1e30", "250"},
	} {
		err := sb.Client.Create(t.Context(), unboundPod(tc.name, ns, tc.gpus, tc.limit))
		denied(t, err, "a pod may request (no node holds that many); request at most 256")
	}
	err := sb.Client.Create(t.Context(), unboundPod("eight-at-700", ns, "8", "700"))
	denied(t, err, `exceeded GPU power budget "sec-overflow": requested 5600 W (8 GPUs x 700 W), committed 0 W of 1400 W`)
	st := waitBudget(t, "sec-overflow", "unchanged", func(st powerv1alpha1.GPUPowerBudgetStatus) bool { return st.ObservedGeneration > 0 })
	if st.CommittedWatts != 0 || st.Pods != 0 || st.GPUs != 0 || len(st.Reservations) != 0 {
		t.Errorf("budget after the attempts: %+v; want nothing committed", st)
	}
}

// pods/status keeps the annotations it is sent: the limit and the stamp
// must not change there, while the kubelet's own status writes never reach
// the webhook, even when it is down.
func TestSecurityStatusSubresource(t *testing.T) {
	ctx := t.Context()
	ns := tenantNamespace(t, "sec-status")
	stamped := unboundPod("stamped", ns, "1", "300")
	create(t, stamped)
	bare := unboundPod("bare", ns, "1", "")
	create(t, bare)

	raise := stamped.DeepCopy()
	raise.Annotations[policy.AnnotationPowerLimit], raise.Annotations[policy.AnnotationPowerLimitValidated] = "700", "700"
	denied(t, sb.Client.Status().Update(ctx, raise), "may not be set or changed through pods/status")
	floor := bare.DeepCopy()
	floor.Annotations = map[string]string{policy.AnnotationPowerLimit: "150", policy.AnnotationPowerLimitValidated: "150"}
	denied(t, sb.Client.Status().Update(ctx, floor), "may not be set or changed through pods/status")

	var got corev1.Pod
	if err := sb.Client.Get(ctx, client.ObjectKeyFromObject(stamped), &got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations[policy.AnnotationPowerLimit] != "300" || got.Annotations[policy.AnnotationPowerLimitValidated] != "300" {
		t.Errorf("annotations after the attempts: %v; want the admitted 300 W", got.Annotations)
	}

	// A status write as the kubelet makes it, with the webhook down.
	if err := sb.Webhook.Kill(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sb.Webhook.Start(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	got.Status.Conditions = append(got.Status.Conditions, corev1.PodCondition{Type: "Example", Status: corev1.ConditionTrue})
	if err := sb.Client.Status().Update(ctx, &got); err != nil {
		t.Errorf("a status write that changes no power annotation failed with the webhook down: %v", err)
	}
	raise.ResourceVersion = ""
	denied(t, sb.Client.Status().Update(ctx, raise), "failed calling webhook")
}

// A Binding's annotations are merged into the pod it binds.
func TestSecurityBindingAnnotations(t *testing.T) {
	ctx := t.Context()
	ns := tenantNamespace(t, "sec-binding")
	pod := unboundPod("to-bind", ns, "1", "")
	create(t, pod)
	forged := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: ns, Annotations: map[string]string{
		policy.AnnotationPowerLimit: "150", policy.AnnotationPowerLimitValidated: "150"}},
		Target: corev1.ObjectReference{Kind: "Node", Name: sandbox.NodeName}}
	denied(t, sb.Client.SubResource("binding").Create(ctx, pod, forged), "may not be set or changed through pods/binding")
	var got corev1.Pod
	if err := sb.Client.Get(ctx, client.ObjectKeyFromObject(pod), &got); err != nil {
		t.Fatal(err)
	}
	if _, has := got.Annotations[policy.AnnotationPowerLimitValidated]; has || got.Spec.NodeName != "" {
		t.Errorf("pod after the forged binding: node %q, annotations %v", got.Spec.NodeName, got.Annotations)
	}
}

// A budget the webhook cannot evaluate is refused when written, so it can
// never deny pods in namespaces it was not meant to select.
func TestSecurityInvalidBudgetRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec powerv1alpha1.GPUPowerBudgetSpec
		want string
	}{
		{"sec-bogus-operator", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000, NamespaceSelector: &metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Bogus", Values: []string{"a"}}}}},
			`spec.namespaceSelector.matchExpressions[0].operator: Invalid value: "Bogus": not a valid selector operator`},
		{"sec-bad-default-selector", powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000, Defaults: []powerv1alpha1.DefaultLimit{{
			Watts: 300, PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: "In"}}}}}},
			`spec.defaults[0].podSelector.matchExpressions[0].values: Required value`},
	} {
		b := &powerv1alpha1.GPUPowerBudget{ObjectMeta: metav1.ObjectMeta{Name: tc.name}, Spec: tc.spec}
		denied(t, sb.Client.Create(t.Context(), b), tc.want)
	}
}

// A raise charged to one budget and denied by another is released from the
// first back to what the pod had: the pod keeps counting there.
func TestSecurityRaiseDeniedByOneBudgetKeepsTheOther(t *testing.T) {
	ctx := t.Context()
	ns := tenantNamespace(t, "sec-raise")
	budgetFor(t, "sec-raise-org", ns, 2000)
	budgetFor(t, "sec-raise-team", ns, 600)
	pod := unboundPod("raised", ns, "2", "250")
	create(t, pod) // 500 W in both
	raised := pod.DeepCopy()
	raised.Annotations[policy.AnnotationPowerLimit] = "400"
	denied(t, sb.Client.Update(ctx, raised), `exceeded GPU power budget "sec-raise-team": requested 300 W more`)
	for _, name := range []string{"sec-raise-org", "sec-raise-team"} {
		waitBudget(t, name, "at the pod's 500 W", func(st powerv1alpha1.GPUPowerBudgetStatus) bool {
			return st.CommittedWatts == 500 && st.Pods == 1
		})
	}
}

// A pod created right after its namespace is judged (the webhook reads a
// namespace its cache has not seen from the API server), never answered 500.
func TestSecurityPodInAFreshNamespace(t *testing.T) {
	budgetFor(t, "sec-fresh", "sec-fresh-0", 10000)
	for i := range 5 {
		ns := tenantNamespace(t, fmt.Sprintf("sec-fresh-%d", i))
		create(t, unboundPod("first", ns, "1", "300"))
	}
	waitBudget(t, "sec-fresh", "charging the pod of the namespace it selects", func(st powerv1alpha1.GPUPowerBudgetStatus) bool {
		return st.CommittedWatts == 300 && st.Pods == 1
	})
}

// A budget created before a pod is admitted charges it once every replica's
// cache holds the budget: the window is the watch's delay, measured here
// (docs/budgets.md). A dry run is checked against the budget and reserves
// nothing, so the first denial marks the end of the window.
func TestSecurityBudgetVisibleWindow(t *testing.T) {
	ctx := t.Context()
	ns := tenantNamespace(t, "sec-window")
	b := &powerv1alpha1.GPUPowerBudget{ObjectMeta: metav1.ObjectMeta{Name: "sec-window"}, Spec: powerv1alpha1.GPUPowerBudgetSpec{
		TotalWatts: 1, NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"security-suite": ns}},
	}}
	if err := sb.Client.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Client.Delete(context.Background(), b) })
	created := time.Now()
	var admitted int
	poll.Eventually(t, 30*time.Second, "the new budget charges pods", func() (bool, string) {
		err := sb.Client.Create(ctx, unboundPod("probe", ns, "1", "300"), client.DryRunAll)
		if err == nil {
			admitted++
		}
		return err != nil && strings.Contains(err.Error(), `exceeded GPU power budget "sec-window"`), fmt.Sprint(err)
	})
	t.Logf("a new budget charged pods %s after its creation (%d dry-run pods admitted before)", time.Since(created).Round(time.Millisecond), admitted)
}

// One board shared by several tenants: MIG slices under the single strategy
// and time-sliced replicas. A limit there would cap every tenant's pod. It
// runs last: while such nodes exist, every unpinned pod with a limit can
// land on them and is denied.
func TestSecuritySharedBoards(t *testing.T) {
	ctx := t.Context()
	ns := tenantNamespace(t, "sec-shared")
	budgetFor(t, "sec-shared", ns, 10000)
	for name, product := range map[string]string{"sec-mig-node": sandbox.GPUProduct + "-MIG-1g.10gb", "sec-ts-node": sandbox.GPUProduct + "-SHARED"} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{policy.LabelGPUProduct: product}}}
		if err := sb.Client.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sb.Client.Delete(context.Background(), node) })
	}
	for _, tc := range []struct{ node, want string }{
		{"sec-mig-node", `the pod can land on MIG slices (nvidia.com/gpu.product="` + sandbox.GPUProduct + `-MIG-1g.10gb", from node "sec-mig-node")`},
		{"sec-ts-node", `the pod can land on time-sliced GPUs (nvidia.com/gpu.product="` + sandbox.GPUProduct + `-SHARED", from node "sec-ts-node")`},
	} {
		pod := unboundPod("on-"+tc.node, ns, "1", "250")
		pod.Spec.NodeName = tc.node
		// The webhook's node cache may not have the new node yet.
		poll.Eventually(t, 30*time.Second, "a limit on "+tc.node+" denied", func() (bool, string) {
			err := sb.Client.Create(ctx, pod.DeepCopy(), client.DryRunAll)
			return err != nil && strings.Contains(err.Error(), tc.want), fmt.Sprint(err)
		})
	}

	// Replicas renamed to nvidia.com/gpu.shared: a limit is denied, and
	// without one they are charged as GPUs at the board's default limit.
	shared := unboundPod("shared-limited", ns, "2", "250")
	shared.Spec.Containers[0].Resources.Limits = corev1.ResourceList{policy.ResourceGPUShared: resource.MustParse("2")}
	shared.Spec.NodeSelector = map[string]string{policy.LabelGPUProduct: sandbox.GPUProduct} // away from the MIG node
	denied(t, sb.Client.Create(ctx, shared), "the pod requests nvidia.com/gpu.shared")
	unlimited := shared.DeepCopy()
	unlimited.Name, unlimited.Annotations = "shared-unlimited", nil
	create(t, unlimited)
	waitBudget(t, "sec-shared", "charging 2 shared GPUs at 700 W", func(st powerv1alpha1.GPUPowerBudgetStatus) bool {
		return st.GPUs == 2 && st.CommittedWatts == 1400
	})
}
