package budget

// Regressions of a hostile review of the pod index (issue 13): each releases
// the watts of a running pod without its fix.

import (
	"context"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// The reconciler ran (controller-runtime waits only for Kind sources;
// source.Func is not a SyncingSource) while the pod index is still
// streaming its initial list: the index is empty and the reflector's
// LastSyncResourceVersion is "". hasCaughtUp treats "" as unreadable and
// marks the budget caught up for good, and every live pod's watts are
// released. Admissions then fill the budget again: committed > total once
// the index syncs.
func TestReconcilerWaitsForThePodIndex(t *testing.T) {
	b, c := ledger(t, 0)
	running := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj() // 500 W
	if err := c.Create(t.Context(), running); err != nil {                                           // API + (synced) index
		t.Fatal(err)
	}
	synced := b.Pods
	// The previous writer counted the pod and pruned its reservation.
	var budget powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), types.NamespacedName{Name: "cluster"}, &budget); err != nil {
		t.Fatal(err)
	}
	budget.Status.CommittedWatts, budget.Status.Pods = 500, 1
	if err := c.Status().Update(t.Context(), &budget); err != nil {
		t.Fatal(err)
	}

	// A freshly started replica that just took the Lease: its index has not
	// synced (New(), nothing stored) and the reflector's RV is "".
	fresh := podindex.New()
	b.Pods = fresh
	podsSeen := func() string { return "" } // reflector.LastSyncResourceVersion() before the first Replace
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return podsSeen() }}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	st := budgetStatus(t, c)
	t.Logf("status %+v caughtUp=%v", st, func() bool { _, ok := r.caughtUp.Load("cluster"); return ok }())
	t.Logf("after reconcile with an unsynced index: committed %d W (was 500, the pod still runs), synced=%v", st.CommittedWatts, fresh.HasSynced())

	// A tenant now asks for 1000 W: it fits the released budget.
	big := testpod.MakePod("b", "llm").UID("pod-2").GPU(4).NodeName("h100-0").Limit("250").Obj() // 1000 W
	denial, err := b.Admit(t.Context(), admissionv1.Create, big, nil, b.Cluster, policy.ClaimsDemand{}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("admission of a 1000 W pod: denial=%q", denial)
	if denial == "" {
		if err := c.Create(t.Context(), big); err != nil {
			t.Fatal(err)
		}
	}
	// The index syncs.
	b.Pods = synced
	podsSeen = func() string { return "999999" }
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	st = budgetStatus(t, c)
	if st.CommittedWatts > 1000 {
		t.Errorf("committed %d W of 1000 W total (pods %d)", st.CommittedWatts, st.Pods)
	}
}

// PodsSeen was read after charges(): the reflector may store a pod and
// advance its RV past the budget's between the two. The snapshot charged is
// older than the version the check approves.
func TestReconcilerReadsThePodsVersionBeforeThePods(t *testing.T) {
	b, c := ledger(t, 0)
	running := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if err := c.Create(t.Context(), running); err != nil {
		t.Fatal(err)
	}
	var budget powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), types.NamespacedName{Name: "cluster"}, &budget); err != nil {
		t.Fatal(err)
	}
	budget.Status.CommittedWatts, budget.Status.Pods = 500, 1 // previous writer pruned pod-1's reservation
	if err := c.Status().Update(t.Context(), &budget); err != nil {
		t.Fatal(err)
	}
	// This replica's index lacks pod-1 (lagging by a few ms)...
	lagging := podindex.New()
	if err := lagging.Replace(nil, "1"); err != nil {
		t.Fatal(err)
	}
	b.Pods = lagging
	stored := false
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string {
			// ...and the reflector stores it, then advances its RV, right
			// after charges() read the index and before hasCaughtUp reads
			// PodsSeen.
			if !stored {
				stored = true
				_ = lagging.Add(running)
			}
			return "999999"
		}}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts < 500 {
		t.Errorf("released the watts of a running pod: committed %d W; want 500 (pod-1 runs; the check passed on an RV newer than the snapshot)", st.CommittedWatts)
	}
}

// prune dropped a reservation because the pod
// index shows the pod, without asking whether the recomputation will count
// it: a pod in a namespace the namespace cache does not hold yet (created
// just before the pod) loses its reservation and is not charged.
func TestPruneKeepsReservationsOfPodsTheReconcilerWillNotCount(t *testing.T) {
	fresh := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "fresh"}}
	b, c := ledger(t, 0, fresh)
	pod := testpod.MakePod("a", "fresh").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if denial, err := b.Admit(t.Context(), admissionv1.Create, pod, nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || denial != "" {
		t.Fatalf("admit: %q %v", denial, err)
	}
	if err := c.Create(t.Context(), pod); err != nil { // stored; the index shows it
		t.Fatal(err)
	}
	// The reconciler's namespace cache has not received "fresh" yet.
	lagging := interceptor.NewClient(c.(client.WithWatch), interceptor.Funcs{
		Get: func(ctx context.Context, cl client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*corev1.Namespace); ok && key.Name == "fresh" {
				return apierrors.NewNotFound(corev1.Resource("namespaces"), key.Name)
			}
			return cl.Get(ctx, key, obj, opts...)
		},
		List: func(ctx context.Context, cl client.WithWatch, list client.ObjectList, opts ...client.ListOption) error {
			if err := cl.List(ctx, list, opts...); err != nil {
				return err
			}
			if nl, ok := list.(*corev1.NamespaceList); ok {
				nl.Items = slices.DeleteFunc(nl.Items, func(n corev1.Namespace) bool { return n.Name == "fresh" })
			}
			return nil
		},
	})
	b.Cache = lagging
	r := &Reconciler{Client: lagging, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return "999999" }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts < 500 {
		t.Errorf("a live 500 W pod is charged nothing: committed %d W, reservations %v", st.CommittedWatts, st.Reservations)
	}
}
