package budget

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nodeindex"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// ledger is a writer replica on a fake API server holding one 1000 W budget
// and the given objects.
func ledger(t *testing.T, committed int64, objs ...client.Object) (*Ledger, client.Client) {
	t.Helper()
	scheme := testScheme(t)
	budget := &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "cluster"},
		Spec:       powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000},
		Status:     powerv1alpha1.GPUPowerBudgetStatus{CommittedWatts: committed},
	}
	// The pod index sees every pod write at once, as a cache that is never
	// behind; tests of a cache that lags say so through PodsSeen.
	pods := podindex.New()
	var initial []any
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			initial = append(initial, p)
		}
	}
	if err := pods.Replace(initial, "1"); err != nil {
		t.Fatal(err)
	}
	indexed := func(obj client.Object, store func(any) error) error {
		if p, ok := obj.(*corev1.Pod); ok {
			return store(p)
		}
		return nil
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithStatusSubresource(budget).
		WithObjects(append(objs, budget, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "llm"}})...).
		WithInterceptorFuncs(interceptor.Funcs{
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				if err := c.Create(ctx, obj, opts...); err != nil {
					return err
				}
				return indexed(obj, pods.Add)
			},
			Update: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.UpdateOption) error {
				if err := c.Update(ctx, obj, opts...); err != nil {
					return err
				}
				return indexed(obj, pods.Update)
			},
			Delete: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.DeleteOption) error {
				if err := c.Delete(ctx, obj, opts...); err != nil {
					return err
				}
				return indexed(obj, pods.Delete)
			},
		}).Build()
	nodes := nodeindex.New()
	nodes.Set("h100-0", "NVIDIA-H100-80GB-HBM3")
	return &Ledger{Cache: c, Pods: pods, API: c, Client: c, Catalog: policy.DefaultCatalog(), Cluster: nodes,
		TTL: time.Minute, Attempts: 5, Now: time.Now}, c
}

// recounter returns one recount of budget "cluster" by a reconciler of b
// whose pod index has caught up.
func recounter(t *testing.T, b *Ledger, c client.Client) func() {
	r := &Reconciler{Client: c, API: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return caughtUp }}
	return func() {
		t.Helper()
		if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
			t.Fatal(err)
		}
	}
}

func budgetStatus(t *testing.T, c client.Client) powerv1alpha1.GPUPowerBudgetStatus {
	t.Helper()
	var b powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), types.NamespacedName{Name: "cluster"}, &b); err != nil {
		t.Fatal(err)
	}
	return b.Status
}

func TestReservationWrittenTwiceIsChargedOnce(t *testing.T) {
	b, c := ledger(t, 0)
	// The second is a forwarded reservation whose answer was lost, written
	// again by the replica that received the pod.
	for range 2 {
		res := b.enqueue(t.Context(), "cluster", &reserveRequest{uid: "pod-1", pod: "llm/a", watts: 500, delta: 500})
		if !res.ok || res.err != nil {
			t.Fatalf("reserve: %+v", res)
		}
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 500 || len(st.Reservations) != 1 {
		t.Errorf("committed %d W with %d reservations; want 500 W with 1", st.CommittedWatts, len(st.Reservations))
	}
	// A raise of the same pod is charged the difference.
	if res := b.enqueue(t.Context(), "cluster", &reserveRequest{uid: "pod-1", pod: "llm/a", watts: 800, delta: 300}); !res.ok {
		t.Fatalf("raise: %+v", res)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 800 || len(st.Reservations) != 1 || st.Reservations[0].Watts != 800 {
		t.Errorf("after the raise: committed %d W, reservations %+v; want 800 W in one", st.CommittedWatts, st.Reservations)
	}
}

func TestReconcilerReleasesOnlyWhatItsPodCacheHasSeen(t *testing.T) {
	// The previous writer pruned the reservation of a 500 W pod its cache
	// showed; this replica's pod cache has not received the pod yet.
	b, c := ledger(t, 500)
	podsSeen := "1"
	r := &Reconciler{Client: c, Ledger: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: time.Now, PodsSeen: func() string { return podsSeen }}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 500 {
		t.Fatalf("committed %d W with the pod cache behind the budget; want the 500 W kept", st.CommittedWatts)
	}

	// The pod arrives: it is counted, nothing is released.
	pod := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if err := c.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	podsSeen = pod.ResourceVersion
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 500 || st.Pods != 1 {
		t.Fatalf("committed %d W for %d pods; want 500 W for 1", st.CommittedWatts, st.Pods)
	}

	// A deleted pod releases its watts once the cache has seen the deletion
	// (which comes after the budget's last write).
	if err := c.Delete(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	var budget powerv1alpha1.GPUPowerBudget
	if err := c.Get(t.Context(), req.NamespacedName, &budget); err != nil {
		t.Fatal(err)
	}
	podsSeen = budget.ResourceVersion
	if _, err := r.Reconcile(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 0 {
		t.Errorf("committed %d W after the pod was deleted; want 0", st.CommittedWatts)
	}
}

// caughtUp is a pod index version past every budget version the fake API
// server writes in these tests: the reconciler may release.
const caughtUp = "999999"

// testScheme holds the core types and GPUPowerBudget, for the fake API
// servers of these tests.
func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	if err := powerv1alpha1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return scheme
}
