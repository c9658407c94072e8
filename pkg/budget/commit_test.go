package budget

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
)

// The write half of the ledger, on a fake API server whose status writes
// are intercepted: what a batch does when its resourceVersion-checked
// update loses a race, fails, or starts from a stale base.

var budgetsResource = schema.GroupResource{Group: powerv1alpha1.GroupVersion.Group, Resource: "gpupowerbudgets"}

// interceptStatus routes the ledger's status writes through write, which
// gets the real write to call (or not).
func interceptStatus(t *testing.T, b *Ledger, c client.Client, write func(ctx context.Context, write func() error, obj client.Object) error) {
	t.Helper()
	b.Metrics = NewMetrics(prometheus.NewRegistry())
	b.Client = interceptor.NewClient(c.(client.WithWatch), interceptor.Funcs{
		SubResourceUpdate: func(ctx context.Context, c client.Client, sub string, obj client.Object, opts ...client.SubResourceUpdateOption) error {
			return write(ctx, func() error { return c.SubResource(sub).Update(ctx, obj, opts...) }, obj)
		},
	})
}

func charge(uid types.UID, watts int64) *reserveRequest {
	return &reserveRequest{op: opCharge, uid: uid, pod: "llm/" + string(uid), watts: watts, delta: watts}
}

func TestConflictIsRetriedAndChargedOnce(t *testing.T) {
	b, c := ledger(t, 0)
	conflicts := 2
	interceptStatus(t, b, c, func(_ context.Context, write func() error, obj client.Object) error {
		if conflicts > 0 {
			conflicts--
			return apierrors.NewConflict(budgetsResource, obj.GetName(), errors.New("the object has been modified"))
		}
		return write()
	})
	if res := b.enqueue(t.Context(), "cluster", charge("pod-1", 500)); !res.ok || res.err != nil || !res.wrote {
		t.Fatalf("reserve after two conflicts: %+v; want charged", res)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 500 || st.AvailableWatts != 500 || len(st.Reservations) != 1 {
		t.Errorf("committed %d W (available %d) with %d reservations; want 500 W once", st.CommittedWatts, st.AvailableWatts, len(st.Reservations))
	}
	if got := testutil.ToFloat64(b.Metrics.conflicts.WithLabelValues("cluster")); got != 2 {
		t.Errorf("conflicts counted %v; want 2", got)
	}
	if got := testutil.ToFloat64(b.Metrics.retries.WithLabelValues("cluster")); got != 1 {
		t.Errorf("batches retried %v; want 1", got)
	}
}

// Another replica wrote first and took 800 W of the 1000: the batch is
// decided again on that version, and the pod that no longer fits is denied
// with the budget as the API server holds it, not as this replica had it.
func TestConflictIsDecidedAgainOnTheWinnersVersion(t *testing.T) {
	b, c := ledger(t, 0)
	raced := false
	interceptStatus(t, b, c, func(ctx context.Context, write func() error, obj client.Object) error {
		if !raced {
			raced = true
			var winner powerv1alpha1.GPUPowerBudget
			if err := c.Get(ctx, types.NamespacedName{Name: obj.GetName()}, &winner); err != nil {
				return err
			}
			winner.Status.CommittedWatts, winner.Status.AvailableWatts = 800, 200
			if err := c.Status().Update(ctx, &winner); err != nil {
				return err
			}
			return apierrors.NewConflict(budgetsResource, obj.GetName(), errors.New("the object has been modified"))
		}
		return write()
	})
	res := b.enqueue(t.Context(), "cluster", charge("pod-1", 500))
	if res.ok || res.err != nil || res.state.Committed != 800 || res.state.Total != 1000 {
		t.Fatalf("reserve after losing to an 800 W write: %+v; want denied against 800 W of 1000 W", res)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 800 || len(st.Reservations) != 0 {
		t.Errorf("committed %d W with reservations %+v; want the winner's 800 W, nothing of ours", st.CommittedWatts, st.Reservations)
	}
}

func TestConflictsPastTheAttemptsFailTheBatch(t *testing.T) {
	b, c := ledger(t, 0)
	b.Attempts = 3
	writes := 0
	interceptStatus(t, b, c, func(_ context.Context, _ func() error, obj client.Object) error {
		writes++
		return apierrors.NewConflict(budgetsResource, obj.GetName(), errors.New("the object has been modified"))
	})
	first, second := charge("pod-1", 300), charge("pod-2", 300)
	// Both requests in one batch: each gets the batch's error.
	q := &budgetQueue{}
	results := b.commit(t.Context(), "cluster", q, []*reserveRequest{first, second})
	for i, res := range results {
		if res.ok || res.err == nil || !strings.Contains(res.err.Error(), "still conflicting after 3 attempts; retry") {
			t.Errorf("request %d: %+v; want the attempts named", i, res)
		}
	}
	if writes != 3 {
		t.Errorf("%d writes; want 3 (Attempts)", writes)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 0 || len(st.Reservations) != 0 {
		t.Errorf("committed %d W; want nothing written", st.CommittedWatts)
	}
	if q.last != nil {
		t.Error("the batch failed but its base is kept for the next one; want it read again")
	}
}

func TestFailedWriteIsAnErrorNotADenial(t *testing.T) {
	b, c := ledger(t, 0)
	interceptStatus(t, b, c, func(_ context.Context, _ func() error, _ client.Object) error {
		return apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
	})
	res := b.enqueue(t.Context(), "cluster", charge("pod-1", 300))
	if res.ok || res.err == nil || !strings.Contains(res.err.Error(), "reserve GPU power in budget cluster") || !strings.Contains(res.err.Error(), "etcdserver: request timed out") {
		t.Fatalf("reserve: %+v; want the write's error, naming the budget", res)
	}
}

// The base a batch starts from without a GET (the cache, or this replica's
// last write) may predate a release by the reconciler: a pod is denied only
// on what the API server holds.
func TestStaleBaseIsReadFreshBeforeDenying(t *testing.T) {
	b, c := ledger(t, 900)
	// The reconciler released 800 W; this replica's cache has not seen it.
	var stored powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), types.NamespacedName{Name: "cluster"}, &stored); err != nil {
		t.Fatal(err)
	}
	b.Cache = fakeAPI(t, stored.DeepCopy())
	stored.Status.CommittedWatts, stored.Status.AvailableWatts = 100, 900
	if err := c.Status().Update(t.Context(), &stored); err != nil {
		t.Fatal(err)
	}
	gets := 0
	api := b.API
	b.API = interceptor.NewClient(c.(client.WithWatch), interceptor.Funcs{
		Get: func(ctx context.Context, _ client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			gets++
			return api.Get(ctx, key, obj, opts...)
		},
	})
	if res := b.enqueue(t.Context(), "cluster", charge("pod-1", 500)); !res.ok || res.err != nil {
		t.Fatalf("reserve 500 W with 100 W committed (900 W in the stale cache): %+v; want charged", res)
	}
	if gets != 1 {
		t.Errorf("%d reads of the API server; want 1 (the fresh read before a denial)", gets)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 600 {
		t.Errorf("committed %d W; want 600 (100 + 500)", st.CommittedWatts)
	}
}
