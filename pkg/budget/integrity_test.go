package budget

import (
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func budgetNamed(name string, total int64, sel *metav1.LabelSelector) *powerv1alpha1.GPUPowerBudget {
	return &powerv1alpha1.GPUPowerBudget{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: total, NamespaceSelector: sel}}
}

func statusOf(t *testing.T, c client.Client, name string) powerv1alpha1.GPUPowerBudgetStatus {
	t.Helper()
	var b powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), types.NamespacedName{Name: name}, &b); err != nil {
		t.Fatal(err)
	}
	return b.Status
}

// A raise charged to "cluster" and denied by "team" is released from
// "cluster" back to the reservation the pod's creation made moments before:
// the pod, not yet in any cache, keeps counting there.
func TestDeniedRaiseRestoresTheOtherBudgetsReservation(t *testing.T) {
	b, c := ledger(t, 0, budgetNamed("team", 600, nil))
	created := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if denial, err := b.Admit(t.Context(), admissionv1.Create, created, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("create: %q %v", denial, err)
	}
	raised := created.DeepCopy()
	raised.Annotations[policy.AnnotationPowerLimit] = "400"
	denial, err := b.Admit(t.Context(), admissionv1.Update, raised, created, b.Cluster, policy.ClaimsDemand{}, false)
	if err != nil || !strings.Contains(denial, `exceeded GPU power budget "team"`) {
		t.Fatalf("raise: %q %v; want team's denial", denial, err)
	}
	for _, name := range []string{"cluster", "team"} {
		st := statusOf(t, c, name)
		if st.CommittedWatts != 500 || len(st.Reservations) != 1 || st.Reservations[0].Watts != 500 {
			t.Errorf("%s: committed %d W, reservations %+v; want the creation's 500 W reservation", name, st.CommittedWatts, st.Reservations)
		}
	}
	// The reconciler, whose cache does not show the pod, keeps it counted.
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return caughtUp }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, c, "cluster"); st.CommittedWatts != 500 {
		t.Errorf("after the reconciler: committed %d W; want 500", st.CommittedWatts)
	}
}

// A reservation whose pod never appears (a forged or failed admission)
// stops counting at its TTL; one whose pod the API server holds while the
// cache is late is renewed, never released. Also on a quiet cluster, where
// the pod cache has not moved past the budget's version (no pod event, no
// bookmark yet) and releases that depend on the cache are held back: whether
// the pod exists is asked of the API server.
func TestExpiredReservationCountsOnlyIfItsPodExists(t *testing.T) {
	for _, tc := range []struct{ name, podsSeen string }{
		{"pod cache caught up", "999999"},
		{"pod cache behind the budget", "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, c := ledger(t, 0)
			b.TTL = 10 * time.Second
			for _, r := range []*reserveRequest{
				{uid: "ghost", pod: "llm/ghost", watts: 600, delta: 600},
				{uid: "late", pod: "llm/late", watts: 300, delta: 300},
			} {
				if res := b.enqueue(t.Context(), "cluster", r); !res.ok {
					t.Fatalf("reserve %s: %+v", r.uid, res)
				}
			}
			// The API server holds the late pod; the reconciler's cache does not.
			api := fakeAPI(t, testpod.MakePod("late", "llm").UID("late").GPU(1).NodeName("h100-0").Limit("300").Obj(),
				testpod.MakePod("ghost", "llm").UID("another-pod-of-that-name").GPU(1).Limit("600").Obj())
			now := time.Now().Add(b.TTL + time.Second)
			r := &Reconciler{Client: c, API: api, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
				Resync: time.Minute, Now: func() time.Time { return now }, PodsSeen: func() string { return tc.podsSeen }}
			b.Now = r.Now
			if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
				t.Fatal(err)
			}
			st := statusOf(t, c, "cluster")
			if st.CommittedWatts != 300 || st.AvailableWatts != 700 || len(st.Reservations) != 1 || st.Reservations[0].PodUID != "late" || !st.Reservations[0].Expires.After(now) {
				t.Errorf("committed %d W (available %d), reservations %+v; want only the late pod's 300 W, renewed", st.CommittedWatts, st.AvailableWatts, st.Reservations)
			}
		})
	}
}

func fakeAPI(t *testing.T, objs ...client.Object) client.Client {
	t.Helper()
	return fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(objs...).Build()
}

// A namespace created moments before its first pod may not be in the cache
// yet: it is read from the API server, not answered with an error.
func TestNamespaceTheCacheHasNotSeen(t *testing.T) {
	b, _ := ledger(t, 0)
	b.Cache = fakeAPI(t, budgetNamed("cluster", 1000, nil))
	b.API = fakeAPI(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fresh", Labels: map[string]string{"team": "a"}}})
	got, err := b.Selecting(t.Context(), "fresh")
	if err != nil || len(got) != 1 {
		t.Fatalf("Selecting = %d budgets, %v; want the cluster budget", len(got), err)
	}
}

// A budget whose selector cannot be evaluated (written before budgets were
// validated) selects nothing, fails no pod, and says so on its status.
func TestInvalidBudgetFailsNoPod(t *testing.T) {
	bogus := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Bogus", Values: []string{"a"}}}}
	b, c := ledger(t, 0, budgetNamed("broken", 100, bogus))
	got, err := b.Selecting(t.Context(), "llm")
	if err != nil || len(got) != 1 || got[0].Name != "cluster" {
		t.Fatalf("Selecting = %v, %v; want only the valid budget", got, err)
	}
	pod := testpod.MakePod("a", "llm").UID("pod-1").GPU(1).NodeName("h100-0").Limit("300").Obj()
	if denial, err := b.Admit(t.Context(), admissionv1.Create, pod, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("admit: %q %v", denial, err)
	}
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return caughtUp }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "broken"}}); err != nil {
		t.Fatal(err)
	}
	cond := meta.FindStatusCondition(statusOf(t, c, "broken").Conditions, powerv1alpha1.ConditionReady)
	if cond == nil || cond.Status != metav1.ConditionFalse || cond.Reason != "InvalidSpec" || !strings.Contains(cond.Message, `"Bogus": not a valid selector operator`) {
		t.Errorf("Ready condition %+v; want False, InvalidSpec, naming the operator", cond)
	}
}

// A create the API server will refuse (its name is taken) reserves nothing:
// repeated, it would keep a shared budget full at no cost to the tenant.
func TestCreateUnderATakenNameReservesNothing(t *testing.T) {
	existing := testpod.MakePod("a", "llm").UID("old").GPU(1).NodeName("h100-0").Limit("300").Obj()
	b, c := ledger(t, 0, existing)
	again := testpod.MakePod("a", "llm").UID("new").GPU(2).NodeName("h100-0").Limit("500").Obj()
	denial, err := b.Admit(t.Context(), admissionv1.Create, again, nil, b.Cluster, policy.ClaimsDemand{}, false)
	if err != nil || !strings.Contains(denial, `pods "a" already exists in namespace "llm"`) {
		t.Fatalf("admit: %q %v; want the taken name named", denial, err)
	}
	if st := statusOf(t, c, "cluster"); st.CommittedWatts != 0 || len(st.Reservations) != 0 {
		t.Errorf("budget %+v; want nothing reserved", st)
	}
	// Once the old pod is gone from the API server, the name is free even
	// if a cache still shows it.
	b.API = fakeAPI(t)
	if denial, err := b.Admit(t.Context(), admissionv1.Create, again, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("admit after the old pod went: %q %v", denial, err)
	}
}

// A pod created at 2x250 W (500 W reserved in both budgets, the pod not yet
// in any cache), lowered to 2x200 W (no charge; the 500 W reservations stay),
// then raised back to 2x250 W while a "team" budget created in between is
// short. "cluster" finds its 500 W reservation already covers the raise
// (already charged: nothing written); "team" denies. Nothing is released
// from "cluster": the pod, alive at 400 W and in no cache, keeps counting.
func TestDeniedRaiseReleasesNothingABudgetAlreadyHeld(t *testing.T) {
	b, c := ledger(t, 0)
	created := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if denial, err := b.Admit(t.Context(), admissionv1.Create, created, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("create: %q %v", denial, err)
	}
	lowered := created.DeepCopy()
	lowered.Annotations[policy.AnnotationPowerLimit] = "200"
	if denial, err := b.Admit(t.Context(), admissionv1.Update, lowered, created, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("lower: %q %v", denial, err)
	}
	// A team budget appears (or widens its selector) after the creation;
	// other pods take 560 W of it, so it cannot take a 100 W raise.
	if err := c.Create(t.Context(), budgetNamed("team", 600, nil)); err != nil {
		t.Fatal(err)
	}
	if res := b.enqueue(t.Context(), "team", &reserveRequest{uid: "other", pod: "llm/other", watts: 560, delta: 560}); !res.ok {
		t.Fatalf("fill team: %+v", res)
	}
	raised := lowered.DeepCopy()
	raised.Annotations[policy.AnnotationPowerLimit] = "250"
	denial, err := b.Admit(t.Context(), admissionv1.Update, raised, lowered, b.Cluster, policy.ClaimsDemand{}, false)
	if err != nil || denial == "" {
		t.Fatalf("raise: %q %v; want team's denial", denial, err)
	}
	st := statusOf(t, c, "cluster")
	if len(st.Reservations) != 1 || st.CommittedWatts < 400 {
		t.Errorf("cluster after the denied raise: committed %d W, reservations %+v; want the pod (alive at 400 W, in no cache) still reserved", st.CommittedWatts, st.Reservations)
	}
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return caughtUp }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, c, "cluster"); st.CommittedWatts < 400 {
		t.Errorf("cluster after the reconciler: committed %d W; want >= 400 W (the pod's cost): a 1000 W pod would now be admitted into a 1000 W budget already holding 400 W", st.CommittedWatts)
	}
}

// One forged AdmissionReview (no client certificate: managed clusters, the
// NetworkPolicy optional) reserves a budget's whole total for a pod UID that
// does exist: the attacker's own long-running pod with no GPUs, whose UID the
// create answer told them. The API server holds a Running pod of that UID,
// but one this budget does not charge: the reservation is not renewed and
// lapses at its TTL.
func TestForgedReservationForAPodWithoutGPUsLapses(t *testing.T) {
	sleeper := testpod.MakePod("sleeper", "llm").UID("sleeper-uid").Obj() // no GPU
	sleeper.Status.Phase = "Running"
	b, c := ledger(t, 0, sleeper)
	b.TTL = 10 * time.Second
	if res := b.enqueue(t.Context(), "cluster", &reserveRequest{uid: "sleeper-uid", pod: "llm/sleeper", watts: 1000, delta: 1000}); !res.ok {
		t.Fatalf("forged reservation: %+v", res)
	}
	now := time.Now()
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: func() time.Time { return now }, PodsSeen: func() string { return caughtUp }}
	b.Now = r.Now
	for i := range 5 { // five TTLs later
		now = now.Add(b.TTL + time.Second)
		if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
			t.Fatal(err)
		}
		if st := statusOf(t, c, "cluster"); st.CommittedWatts != 0 {
			t.Fatalf("after %d TTLs: committed %d W, reservations %+v; want the forged reservation gone (its pod holds no GPU)", i+1, st.CommittedWatts, st.Reservations)
		}
	}
}

// A raise that an existing reservation already covers (a pod created at
// 2x250 W, lowered to 2x200 W, raised back just before the creation's
// reservation expires) renews that reservation, as a new one would count:
// otherwise the reconciler, whose cache still shows 400 W, would drop it at
// expiry and 100 W of an admitted raise would not be counted.
func TestRaiseBackToAHeldReservationRenewsIt(t *testing.T) {
	b, c := ledger(t, 0)
	b.TTL = 35 * time.Second
	now := time.Now()
	b.Now = func() time.Time { return now }
	created := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if d, err := b.Admit(t.Context(), admissionv1.Create, created, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("create: %q %v", d, err)
	}
	lowered := created.DeepCopy()
	lowered.Annotations[policy.AnnotationPowerLimit] = "200"
	if d, err := b.Admit(t.Context(), admissionv1.Update, lowered, created, b.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("lower: %q %v", d, err)
	}
	// The lowered pod is stored and in the cache.
	stored := lowered.DeepCopy()
	stored.Status.Phase = "Running"
	if err := c.Create(t.Context(), stored); err != nil {
		t.Fatal(err)
	}
	// 33 s after the creation: the raise back to 250 W is admitted.
	created0 := now
	now = now.Add(b.TTL - 2*time.Second)
	raised := lowered.DeepCopy()
	raised.Annotations[policy.AnnotationPowerLimit] = "250"
	if d, err := b.Admit(t.Context(), admissionv1.Update, raised, lowered, b.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("raise: %q %v", d, err)
	}
	st := statusOf(t, c, "cluster")
	if len(st.Reservations) == 1 && !st.Reservations[0].Expires.After(now.Add(b.TTL-2*time.Second)) {
		t.Errorf("the admitted raise is covered by a reservation expiring %v after its admission; want ~TTL (%v)",
			st.Reservations[0].Expires.Sub(now), b.TTL)
	}
	// 2.1 s later (the creation's reservation has expired) the reconciler
	// runs; the raise is still in flight (other validating webhooks, quota,
	// etcd: the 35 s the TTL is sized for).
	now = created0.Add(b.TTL + 100*time.Millisecond)
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: func() time.Time { return now }, PodsSeen: func() string { return caughtUp }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, c, "cluster"); st.CommittedWatts < 500 {
		t.Errorf("after the reconciler: committed %d W; want >= 500 W (the admitted raise, in flight)", st.CommittedWatts)
	}
	other := testpod.MakePod("b", "llm").UID("pod-2").GPU(2).NodeName("h100-0").Limit("300").Obj()
	if d, err := b.Admit(t.Context(), admissionv1.Create, other, nil, b.Cluster, policy.ClaimsDemand{}, false); err == nil && d == "" {
		t.Errorf("a 600 W pod was admitted into a 1000 W budget whose admitted pods hold 500 W: 1100 W committed")
	}
}
