package webhook_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

const budgetLabel = "power.test/budget"

// budgetNamespace creates a namespace with the given labels.
func budgetNamespace(t *testing.T, name string, labels map[string]string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := k8s.Create(t.Context(), ns); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// createBudget creates a budget selecting namespaces labelled key=value.
func createBudget(t *testing.T, name string, total int64, key, value string) {
	t.Helper()
	b := &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{
			TotalWatts:        total,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{key: value}},
		},
	}
	if err := k8s.Create(t.Context(), b); err != nil {
		t.Fatalf("create budget %s: %v", name, err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), b) })
}

func getBudget(t *testing.T, name string) *powerv1alpha1.GPUPowerBudget {
	t.Helper()
	var b powerv1alpha1.GPUPowerBudget
	if err := k8s.Get(t.Context(), types.NamespacedName{Name: name}, &b); err != nil {
		t.Fatalf("get budget %s: %v", name, err)
	}
	return &b
}

// eventually polls cond until it holds, failing the test with the last
// reason after a minute.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, time.Minute, what, cond)
}

// committedBecomes waits until the reconciled status shows committed watts and
// no reservation left.
func committedBecomes(t *testing.T, budget string, want int64) {
	t.Helper()
	eventually(t, fmt.Sprintf("budget %s commits %d W", budget, want), func() (bool, string) {
		b := getBudget(t, budget)
		st := b.Status
		return st.CommittedWatts == want && len(st.Reservations) == 0 && st.AvailableWatts == max(0, b.Spec.TotalWatts-want),
			fmt.Sprintf("committed %d, available %d, reservations %d", st.CommittedWatts, st.AvailableWatts, len(st.Reservations))
	})
}

func gpuPod(name, ns string, gpus int64, watts string) *corev1.Pod {
	return testpod.MakePod(name, ns).GPU(gpus).NodeName("h100-0").Limit(watts).Obj()
}

func createPod(t *testing.T, p *corev1.Pod) error {
	t.Helper()
	return k8s.Create(t.Context(), p)
}

func budgetDenial(budget, requested string, committed, total int64) string {
	return fmt.Sprintf(`exceeded GPU power budget %q: requested %s, committed %d W of %d W, available %d W`,
		budget, requested, committed, total, max(0, total-committed))
}

func TestBudgetInvariantUnderConcurrency(t *testing.T) {
	const (
		total   = 10_000
		cost    = 250 // 1 GPU x 250 W
		pods    = 200
		clients = 20
		rounds  = 5
	)
	for round := range rounds {
		name := fmt.Sprintf("concurrent-%d", round)
		ns := budgetNamespace(t, name, map[string]string{budgetLabel: name})
		createBudget(t, name, total, budgetLabel, name)

		// Watch every status the budget goes through.
		wc, err := client.NewWithWatch(restConfig, client.Options{Scheme: k8s.Scheme()})
		if err != nil {
			t.Fatal(err)
		}
		w, err := wc.Watch(t.Context(), &powerv1alpha1.GPUPowerBudgetList{}, client.MatchingFields{"metadata.name": name})
		if err != nil {
			t.Fatal(err)
		}
		var maxSeen atomic.Int64
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			for ev := range w.ResultChan() {
				if b, ok := ev.Object.(*powerv1alpha1.GPUPowerBudget); ok && ev.Type != watch.Error {
					if c := b.Status.CommittedWatts; c > maxSeen.Load() {
						maxSeen.Store(c)
					}
				}
			}
		}()

		var admitted, denied atomic.Int64
		var wrong sync.Map
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				for i := range pods / clients {
					err := createPod(t, gpuPod(fmt.Sprintf("w-%02d-%02d", c, i), ns, 1, "250"))
					switch {
					case err == nil:
						admitted.Add(1)
					case apierrors.IsForbidden(err) && strings.Contains(err.Error(), fmt.Sprintf(`exceeded GPU power budget %q: requested 250 W (1 GPU x 250 W)`, name)):
						denied.Add(1)
					default:
						wrong.Store(err.Error(), true)
					}
				}
			})
		}
		wg.Wait()
		wrong.Range(func(k, _ any) bool { t.Errorf("round %d: unexpected error: %s", round, k); return true })
		if got, want := admitted.Load(), int64(total/cost); got != want {
			t.Errorf("round %d: %d pods admitted; want floor(%d / %d) = %d", round, got, total, cost, want)
		}
		if got := denied.Load(); got != pods-total/cost {
			t.Errorf("round %d: %d pods denied with the budget message; want %d", round, got, pods-total/cost)
		}
		committedBecomes(t, name, total)
		w.Stop()
		<-watched
		if m := maxSeen.Load(); m > total {
			t.Errorf("round %d: a status showed %d W committed of %d W", round, m, total)
		}
		var list corev1.PodList
		if err := k8s.List(t.Context(), &list, client.InNamespace(ns)); err != nil || len(list.Items) != total/cost {
			t.Errorf("round %d: %d pods stored (%v); want %d", round, len(list.Items), err, total/cost)
		}
	}
}

func TestBudgetReleaseAndExpiry(t *testing.T) {
	ns := budgetNamespace(t, "release", map[string]string{budgetLabel: "release"})
	createBudget(t, "release", 2000, budgetLabel, "release")

	a, b := gpuPod("a", ns, 2, "250"), gpuPod("b", ns, 2, "250")
	unlimited := testpod.MakePod("unlimited", ns).GPU(1).NodeName("h100-0").Obj() // the H100's 700 W default
	for _, p := range []*corev1.Pod{a, b, unlimited} {
		if err := createPod(t, p); err != nil {
			t.Fatalf("create %s: %v", p.Name, err)
		}
	}
	committedBecomes(t, "release", 1700)

	c := gpuPod("c", ns, 2, "250")
	err := createPod(t, c)
	want := budgetDenial("release", "500 W (2 GPUs x 250 W)", 1700, 2000)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("over-budget pod: %v; want 403 with %q", err, want)
	}

	// A deleted pod releases its watts once it is gone (a bound pod stays
	// Terminating, and charged, until its kubelet confirms; there is none here).
	if err := k8s.Delete(t.Context(), a, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	committedBecomes(t, "release", 1200)
	if err := createPod(t, gpuPod("c", ns, 2, "250")); err != nil {
		t.Fatalf("pod that fits after the release: %v", err)
	}
	committedBecomes(t, "release", 1700)

	// A pod that finished releases its watts.
	b.Status.Phase = corev1.PodSucceeded
	if err := k8s.Status().Update(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	committedBecomes(t, "release", 1200)

	// A create under a taken name, which storage would refuse after
	// admission, is denied before anything is reserved.
	err = createPod(t, gpuPod("c", ns, 2, "250"))
	if err == nil || !strings.Contains(err.Error(), `pods "c" already exists in namespace "release": no GPU power is reserved`) {
		t.Fatalf("duplicate pod: %v; want the webhook's denial", err)
	}
	if st := getBudget(t, "release").Status; len(st.Reservations) != 0 || st.CommittedWatts != 1200 {
		t.Fatalf("after the refused create: committed %d with reservations %+v; want 1200 and none", st.CommittedWatts, st.Reservations)
	}
	budgetSeriesBecome(t, "release", map[string]float64{
		"dynamo_power_budget_total_watts": 2000, "dynamo_power_budget_committed_watts": 1200,
		"dynamo_power_budget_available_watts": 800, "dynamo_power_budget_pods": 2, "dynamo_power_budget_gpus": 3,
	})
}

// budgetSeriesBecome waits until the budget's gauges hold want, summed over
// the replicas, and exported by one of them only (the writer): a sum over
// replicas must count each budget once.
func budgetSeriesBecome(t *testing.T, budget string, want map[string]float64) {
	t.Helper()
	eventually(t, "budget series of "+budget, func() (bool, string) {
		got, exporters := map[string]float64{}, map[string]int{}
		for _, reg := range webhooks.registries() {
			families, err := reg.Gather()
			if err != nil {
				return false, err.Error()
			}
			for _, f := range families {
				if _, wanted := want[f.GetName()]; !wanted {
					continue
				}
				for _, m := range f.GetMetric() {
					if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == budget {
						got[f.GetName()] += m.GetGauge().GetValue()
						exporters[f.GetName()]++
					}
				}
			}
		}
		for name, v := range want {
			if got[name] != v || exporters[name] != 1 {
				return false, fmt.Sprintf("%s = %v from %d replicas; want %v from one", name, got[name], exporters[name], v)
			}
		}
		return true, ""
	})
}

func TestNestedBudgets(t *testing.T) {
	teamA := budgetNamespace(t, "team-a", map[string]string{"power.test/org": "nested", "power.test/team": "a"})
	teamB := budgetNamespace(t, "team-b", map[string]string{"power.test/org": "nested"})
	createBudget(t, "org", 1000, "power.test/org", "nested")
	createBudget(t, "team-a", 500, "power.test/team", "a")

	steps := []struct {
		pod    *corev1.Pod
		denial string
	}{
		{gpuPod("a1", teamA, 2, "250"), ""},
		{gpuPod("a2", teamA, 1, "250"), budgetDenial("team-a", "250 W (1 GPU x 250 W)", 500, 500)},
		{gpuPod("b1", teamB, 2, "250"), ""},
		{gpuPod("b2", teamB, 1, "250"), budgetDenial("org", "250 W (1 GPU x 250 W)", 1000, 1000)},
		{gpuPod("a3", teamA, 1, "250"), budgetDenial("org", "250 W (1 GPU x 250 W)", 1000, 1000) + "; " +
			budgetDenial("team-a", "250 W (1 GPU x 250 W)", 500, 500)},
	}
	for _, s := range steps {
		err := createPod(t, s.pod)
		if s.denial == "" {
			if err != nil {
				t.Fatalf("%s: %v", s.pod.Name, err)
			}
			continue
		}
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), s.denial) {
			t.Fatalf("%s: %v\nwant 403 with: %s", s.pod.Name, err, s.denial)
		}
	}
	committedBecomes(t, "org", 1000)
	committedBecomes(t, "team-a", 500)
}

func TestBudgetUpdateUpAndDown(t *testing.T) {
	ns := budgetNamespace(t, "updates", map[string]string{budgetLabel: "updates"})
	createBudget(t, "updates", 1000, budgetLabel, "updates")
	p := gpuPod("planner", ns, 2, "250")
	if err := createPod(t, p); err != nil {
		t.Fatal(err)
	}
	setLimit := func(watts string) error {
		return k8s.Patch(t.Context(), p, client.RawPatch(types.MergePatchType,
			[]byte(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, policy.AnnotationPowerLimit, watts))))
	}
	if err := setLimit("400"); err != nil {
		t.Fatalf("raise within budget: %v", err)
	}
	committedBecomes(t, "updates", 800)
	err := setLimit("600")
	want := budgetDenial("updates", "400 W more (now 1200 W (2 GPUs x 600 W))", 800, 1000)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("raise over budget: %v\nwant 403 with: %s", err, want)
	}
	if err := setLimit("200"); err != nil {
		t.Fatalf("lowering is always allowed: %v", err)
	}
	committedBecomes(t, "updates", 400)
}

func TestBudgetDryRunReservesNothing(t *testing.T) {
	ns := budgetNamespace(t, "dry-run", map[string]string{budgetLabel: "dry-run"})
	createBudget(t, "dry-run", 600, budgetLabel, "dry-run")
	if err := createPod(t, gpuPod("first", ns, 2, "250")); err != nil {
		t.Fatal(err)
	}
	committedBecomes(t, "dry-run", 500)

	out, err := kubectl(t, manifest(t, gpuPod("fits", ns, 1, "100"+"")), "apply", "--dry-run=server", "-f", "-")
	if err == nil {
		t.Fatalf("dry run of a 100 W pod on an H100 (min 200 W) passed: %s", out)
	}
	if out, err := kubectl(t, manifest(t, gpuPod("too-big", ns, 1, "250")), "apply", "--dry-run=server", "-f", "-"); err == nil ||
		!strings.Contains(out, budgetDenial("dry-run", "250 W (1 GPU x 250 W)", 500, 600)) {
		t.Fatalf("dry run over budget: %v: %s", err, out)
	}
	// A 50 W pod fits nowhere on an H100 either; use the L4 node for one that fits.
	fits := testpod.MakePod("fits", ns).GPU(1).NodeName("l4-0").Limit("70").Obj()
	if out, err := kubectl(t, manifest(t, fits), "apply", "--dry-run=server", "-f", "-"); err != nil {
		t.Fatalf("dry run within budget: %v: %s", err, out)
	}
	if st := getBudget(t, "dry-run").Status; st.CommittedWatts != 500 || len(st.Reservations) != 0 {
		t.Errorf("dry runs changed the budget: committed %d, reservations %+v", st.CommittedWatts, st.Reservations)
	}
}

func TestBudgetCreatedAfterPodsAndTotalLowered(t *testing.T) {
	ns := budgetNamespace(t, "late", map[string]string{budgetLabel: "late"})
	for _, p := range []*corev1.Pod{gpuPod("old-0", ns, 2, "250"), gpuPod("old-1", ns, 2, "250")} {
		if err := createPod(t, p); err != nil {
			t.Fatal(err)
		}
	}
	createBudget(t, "late", 600, budgetLabel, "late")
	eventually(t, "budget over-committed by pods that predate it", func() (bool, string) {
		b := getBudget(t, "late")
		c := meta.FindStatusCondition(b.Status.Conditions, powerv1alpha1.ConditionOverCommitted)
		return b.Status.CommittedWatts == 1000 && b.Status.AvailableWatts == 0 && c != nil && c.Status == metav1.ConditionTrue,
			fmt.Sprintf("committed %d, condition %+v", b.Status.CommittedWatts, c)
	})
	eventually(t, "an OverCommitted Warning event on the budget", func() (bool, string) {
		var list eventsv1.EventList
		if err := k8s.List(t.Context(), &list); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "late" && e.Reason == "OverCommitted" && e.Type == corev1.EventTypeWarning {
				return strings.Contains(e.Note, "live pods commit 1000 W of 600 W"), e.Note
			}
		}
		return false, fmt.Sprintf("%d events, none for the budget", len(list.Items))
	})
	err := createPod(t, gpuPod("new", ns, 1, "200"))
	if want := budgetDenial("late", "200 W (1 GPU x 200 W)", 1000, 600); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("new pod in an over-committed budget: %v\nwant: %s", err, want)
	}

	// Raising the total ends the over-commit; lowering it again leaves the
	// running pods alone and denies new ones.
	b := getBudget(t, "late")
	b.Spec.TotalWatts = 1500
	if err := k8s.Update(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if err := createPod(t, gpuPod("new", ns, 1, "200")); err != nil {
		t.Fatalf("pod within the raised total: %v", err)
	}
	committedBecomes(t, "late", 1200)
	b = getBudget(t, "late")
	b.Spec.TotalWatts = 700
	if err := k8s.Update(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	eventually(t, "over-committed after the total was lowered", func() (bool, string) {
		b := getBudget(t, "late")
		return meta.IsStatusConditionTrue(b.Status.Conditions, powerv1alpha1.ConditionOverCommitted) && b.Status.ObservedGeneration == b.Generation,
			fmt.Sprintf("%+v", b.Status.Conditions)
	})
	var pods corev1.PodList
	if err := k8s.List(t.Context(), &pods, client.InNamespace(ns)); err != nil || len(pods.Items) != 3 {
		t.Errorf("running pods after lowering the total: %d (%v); want 3 untouched", len(pods.Items), err)
	}
	if err := createPod(t, gpuPod("newer", ns, 1, "200")); !apierrors.IsForbidden(err) {
		t.Errorf("new pod after the total was lowered: %v; want denied", err)
	}
}

func TestBudgetDefaults(t *testing.T) {
	ns := budgetNamespace(t, "defaults", map[string]string{budgetLabel: "defaults"})
	b := &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "defaults"},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{
			TotalWatts:        5000,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{budgetLabel: "defaults"}},
			Defaults: []powerv1alpha1.DefaultLimit{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "prefill"}}, Watts: 450},
				{Watts: 350},
			},
		},
	}
	if err := k8s.Create(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), b) })
	eventually(t, "the budget in every replica's cache", func() (bool, string) {
		p := testpod.MakePod("probe", ns).GPU(1).NodeName("h100-0").Obj()
		if err := k8s.Create(t.Context(), p, client.DryRunAll); err != nil {
			return false, err.Error()
		}
		return p.Annotations[policy.AnnotationPowerLimit] == "350", fmt.Sprint(p.Annotations)
	})
	tests := []struct {
		pod  *corev1.Pod
		want string
	}{
		{testpod.MakePod("prefill", ns).GPU(2).NodeName("h100-0").Label("role", "prefill").Obj(), `limit="450" stamp="450"`},
		{testpod.MakePod("other", ns).GPU(2).NodeName("h100-0").Obj(), `limit="350" stamp="350"`},
		// The budget's own rules come before the --default-rule flags (role=decode=300).
		{testpod.MakePod("decode", ns).GPU(2).NodeName("h100-0").Label("role", "decode").Obj(), `limit="350" stamp="350"`},
	}
	for _, tt := range tests {
		if err := createPod(t, tt.pod); err != nil {
			t.Fatalf("%s: %v", tt.pod.Name, err)
		}
		if got := powerAnnotations(tt.pod.Annotations); got != tt.want {
			t.Errorf("%s: %s; want %s", tt.pod.Name, got, tt.want)
		}
	}
	committedBecomes(t, "defaults", 2*450+2*350+2*350)
}

func TestBudgetLeaderFailover(t *testing.T) {
	ns := budgetNamespace(t, "failover", map[string]string{budgetLabel: "failover"})
	createBudget(t, "failover", 2000, budgetLabel, "failover")
	pods := []*corev1.Pod{gpuPod("p0", ns, 2, "250"), gpuPod("p1", ns, 2, "250")}
	for _, p := range pods {
		if err := createPod(t, p); err != nil {
			t.Fatal(err)
		}
	}
	committedBecomes(t, "failover", 1000)

	leader := webhooks.leader()
	if leader == nil {
		t.Fatal("no replica is leading")
	}
	if err := webhooks.stop(leader); err != nil {
		t.Fatalf("stop leader %s: %v", leader.name, err)
	}
	t.Cleanup(func() {
		if err := webhooks.start(); err != nil {
			t.Errorf("replace the stopped replica: %v", err)
		}
	})
	// With the leader gone, the status is still kept right by the new one.
	if err := k8s.Delete(t.Context(), pods[0], client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	committedBecomes(t, "failover", 500)
	if webhooks.leader() == nil {
		t.Error("no replica took over the lead")
	}
}
