package budget

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Reconciler recomputes each budget's status from the live pods it
// charges plus the reservations of pods not yet seen, so deleted and finished
// pods release their watts and reservations of pods that were never stored
// expire. It runs on the leader, which is also the replica the others forward
// reservations to; its recomputation is a member of the ledger's next batch,
// applied to the version that batch writes, so the two never conflict.
type Reconciler struct {
	Client client.Client
	// API reads the pod of an expiring reservation that the cache does not
	// show, so a pod the cache is late for keeps counting.
	API      client.Reader
	Ledger   *Ledger
	Catalog  policy.Catalog
	Cluster  policy.Cluster
	Recorder events.EventRecorder
	Metrics  *Metrics
	// Resync bounds how long drift (a missed event, an expired reservation)
	// can last.
	Resync time.Duration
	Now    func() time.Time
	// PodsSeen is the resourceVersion the pod cache has caught up to.
	PodsSeen func() string

	caughtUp sync.Map // budget name -> true once PodsSeen passed a base
}

// settle coalesces a burst of pod events and of reservation writes into one
// recomputation: during a scale-up each would otherwise cost a status write
// and a list of every charged pod.
const settle = 500 * time.Millisecond

// SetupWithManager registers the reconciler: spec changes trigger it at once,
// status, pod and namespace changes after settle.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	enqueueAll := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request], after time.Duration) bool {
		var list powerv1alpha1.GPUPowerBudgetList
		if err := r.Client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
			log.FromContext(ctx).Error(err, "Failed to list budgets")
			return false
		}
		for _, b := range list.Items {
			q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Name: b.Name}}, after)
		}
		return true
	}
	allBudgets := handler.Funcs{
		CreateFunc: func(ctx context.Context, _ event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q, settle)
		},
		UpdateFunc: func(ctx context.Context, _ event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q, settle)
		},
		DeleteFunc: func(ctx context.Context, _ event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q, settle)
		},
	}
	self := func(o client.Object) reconcile.Request {
		return reconcile.Request{NamespacedName: types.NamespacedName{Name: o.GetName()}}
	}
	budgets := handler.Funcs{
		CreateFunc: func(_ context.Context, e event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			q.Add(self(e.Object))
		},
		UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			if e.ObjectNew.GetGeneration() != e.ObjectOld.GetGeneration() {
				q.Add(self(e.ObjectNew))
				return
			}
			// A reservation was written: its expiry must be scheduled.
			q.AddAfter(self(e.ObjectNew), settle)
		},
		DeleteFunc: func(_ context.Context, e event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			q.Add(self(e.Object))
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("gpupowerbudget").
		Watches(&powerv1alpha1.GPUPowerBudget{}, budgets).
		WatchesRawSource(&podSource{pods: r.Ledger.Pods, enqueueAll: enqueueAll, after: afterFunc}).
		Watches(&corev1.Namespace{}, allBudgets).
		Complete(r)
}

// podSource wakes the reconciler on the pod changes that can move a budget,
// and holds its workers until the pod index has synced, as a Kind source
// does for a cache: a recomputation from an empty index would release the
// watts of every live pod.
type podSource struct {
	pods *podindex.Index
	// enqueueAll lists the budgets and enqueues each after a delay; false
	// when the budgets could not be listed.
	enqueueAll func(context.Context, workqueue.TypedRateLimitingInterface[reconcile.Request], time.Duration) bool
	// after runs fn once d has passed (time.AfterFunc; a test fires it).
	after   func(d time.Duration, fn func())
	pending atomic.Bool
}

func afterFunc(d time.Duration, fn func()) { time.AfterFunc(d, fn) }

// Start implements source.Source. A burst of pod changes lists the budgets
// once, not once a GPU pod event: the first change schedules a pass after
// settle and the changes until then ride on it, since the reconciles it
// enqueues read the index as it is when they run. A pass that cannot list
// the budgets is tried again after settle, until ctx ends: the burst's
// changes are still to be counted.
func (s *podSource) Start(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	var pass func()
	pass = func() {
		s.pending.Store(false)
		if !s.enqueueAll(ctx, q, 0) && ctx.Err() == nil && !s.pending.Swap(true) {
			s.after(settle, pass)
		}
	}
	s.pods.OnChange(func() {
		if !s.pending.Swap(true) {
			s.after(settle, pass)
		}
	})
	return nil
}

// WaitForSync implements source.SyncingSource.
func (s *podSource) WaitForSync(ctx context.Context) error {
	return wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(context.Context) (bool, error) {
		return s.pods.HasSynced(), nil
	})
}

// Reconcile implements reconcile.Reconciler.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var budget powerv1alpha1.GPUPowerBudget
	if err := r.Client.Get(ctx, req.NamespacedName, &budget); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.forgetBudget(req.Name)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	if !r.Ledger.Pods.HasSynced() {
		// An empty index would release every live pod's watts. The
		// controller waits for it (podSource), this guards every caller.
		return reconcile.Result{RequeueAfter: settle}, nil
	}
	res := r.Ledger.enqueue(ctx, budget.Name, &reserveRequest{op: opRecount, reconciler: r})
	if res.err != nil {
		return reconcile.Result{}, fmt.Errorf("update budget %s status: %w", budget.Name, res.err)
	}
	found := res.recounted
	if found.behind {
		log.FromContext(ctx).V(1).Info("Waiting for the pod cache to catch up with the budget before releasing watts",
			"budget", budget.Name, "budgetVersion", budget.ResourceVersion, "podsVersion", r.PodsSeen())
		return reconcile.Result{RequeueAfter: settle}, nil
	}
	r.Metrics.budgetState(budget.Name, found.total, &found.next)
	if found.over && !found.wasOver && r.Recorder != nil {
		msg := meta.FindStatusCondition(found.next.Conditions, powerv1alpha1.ConditionOverCommitted).Message
		r.Recorder.Eventf(&budget, nil, corev1.EventTypeWarning, "OverCommitted", "Reconcile", msg)
	}
	return reconcile.Result{RequeueAfter: r.nextCheck(&found.next, found.now)}, nil
}

// recountResult is what a recount found on the version of the budget the ledger
// then wrote.
type recountResult struct {
	next  powerv1alpha1.GPUPowerBudgetStatus // the status written
	total int64
	now   time.Time
	// over and wasOver: the budget's live pods exceed its total, now and
	// before; behind: the pod index is behind the budget, so nothing was
	// released that depends on it.
	over, wasOver, behind bool
}

// recount rewrites b's status from the live pods it charges and its
// reservations, run by the ledger on the base of the batch that carries the
// reconciler's request. It reports whether the status changed.
func (r *Reconciler) recount(ctx context.Context, b *powerv1alpha1.GPUPowerBudget) (recountResult, bool, error) {
	found := recountResult{now: r.Now(), total: b.Spec.TotalWatts}
	if errs := ValidateSpec(&b.Spec); len(errs) > 0 {
		changed := r.markInvalid(b, errs.ToAggregate().Error())
		found.next = *b.Status.DeepCopy() // exported as stored, not as zeros
		return found, changed, nil
	}
	// The version first, then the pods: the index then holds at least
	// every pod write up to it.
	seen := r.PodsSeen()
	live, err := r.charges(ctx, b)
	if err != nil {
		return found, false, err
	}
	before := b.Status.DeepCopy()
	// Asked once per reservation below: a set, not a scan of every charged
	// pod (tens of thousands) each time.
	charged := sets.New[types.UID]()
	for _, c := range live {
		charged.Insert(c.UID)
	}
	if err := r.extendLate(ctx, b, charged, found.now); err != nil {
		return found, false, err
	}
	checked := slices.Clone(b.Status.Reservations)
	found.wasOver = meta.IsStatusConditionTrue(before.Conditions, powerv1alpha1.ConditionOverCommitted)
	found.over = r.setStatus(b, live, found.now)
	if found.behind = b.Status.CommittedWatts < before.CommittedWatts && !r.hasCaughtUp(b, seen); found.behind {
		b.Status = *before
		return found, lapse(&b.Status, b.Spec.TotalWatts, checked, charged, found.now), nil
	}
	found.next = *b.Status.DeepCopy()
	return found, !equality.Semantic.DeepEqual(before, &found.next), nil
}

// lapse applies, to a status kept while the pod cache catches up, what
// does not depend on that cache: reservations the API server was asked about
// (checked, as extendLate left them) are renewed, and those that expired with
// no pod the budget charges are dropped with their watts. A quiet cluster
// then releases a forged or failed admission's watts at its TTL, without
// waiting for a pod event or watch bookmark to move the cache.
func lapse(st *powerv1alpha1.GPUPowerBudgetStatus, total int64, checked []powerv1alpha1.Reservation, charged sets.Set[types.UID], now time.Time) bool {
	changed := false
	kept := st.Reservations[:0]
	for _, res := range st.Reservations {
		i := slices.IndexFunc(checked, func(c powerv1alpha1.Reservation) bool { return c.PodUID == res.PodUID })
		switch {
		case i < 0 || charged.Has(res.PodUID):
		case now.Before(checked[i].Expires.Time):
			if !checked[i].Expires.Equal(&res.Expires) || checked[i].Watts != res.Watts {
				res.Expires, res.Watts, changed = checked[i].Expires, checked[i].Watts, true
			}
		default:
			st.CommittedWatts = policy.SatSub(st.CommittedWatts, res.Watts)
			changed = true
			continue
		}
		kept = append(kept, res)
	}
	st.Reservations = kept
	st.AvailableWatts = policy.SatSub(total, st.CommittedWatts)
	return changed
}

// markInvalid reports a budget whose selectors cannot be evaluated on its
// Ready condition: it charges no pod (Selecting skips it) until it is fixed.
func (r *Reconciler) markInvalid(b *powerv1alpha1.GPUPowerBudget, why string) bool {
	before := b.Status.DeepCopy()
	b.Status.ObservedGeneration = b.Generation
	meta.SetStatusCondition(&b.Status.Conditions, metav1.Condition{
		Type: powerv1alpha1.ConditionReady, Status: metav1.ConditionFalse, Reason: "InvalidSpec",
		Message: "the budget selects and charges no pod until this is fixed: " + why, ObservedGeneration: b.Generation,
	})
	return !equality.Semantic.DeepEqual(before, &b.Status)
}

// extendLate renews the expired reservations whose pod the API server holds
// but the cache does not show yet. A reservation's TTL only bounds how long
// a pod that never appears (a forged or failed admission) counts; it never
// releases the watts of a pod the cache is merely late for. Only a pod this
// budget charges renews it, and for no more than the pod costs: a forged
// reservation naming a real pod without GPUs, or in a namespace the budget
// does not select, lapses.
func (r *Reconciler) extendLate(ctx context.Context, b *powerv1alpha1.GPUPowerBudget, charged sets.Set[types.UID], now time.Time) error {
	sel, err := namespaceSelector(b)
	if err != nil {
		return err
	}
	count := b.Spec.UnlimitedPods != powerv1alpha1.UnlimitedPodsIgnore
	for i := range b.Status.Reservations {
		res := &b.Status.Reservations[i]
		if now.Before(res.Expires.Time) || charged.Has(res.PodUID) {
			continue
		}
		ns, name, ok := strings.Cut(res.Pod, "/")
		if !ok {
			continue
		}
		var pod corev1.Pod
		err := r.API.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("read pod %s of an expired reservation: %w", res.Pod, err)
		case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
			continue
		}
		podNS, err := r.Ledger.namespace(ctx, pod.Namespace)
		if err != nil {
			return err
		}
		// The reservation is the pod's own, or the one it made for a named
		// claim it uses.
		key := res.PodUID
		if claim, uid, isClaim := policy.ClaimReservationOf(res.PodUID); isClaim && uid == pod.UID {
			key = claim
		}
		charges := r.Catalog.CostOf(&pod, r.Cluster, count).Charges(pod.UID, pod.Namespace)
		i := slices.IndexFunc(charges, func(c policy.Charge) bool { return c.UID == key && c.Watts > 0 })
		if i < 0 || !sel.Matches(labels.Set(podNS.Labels)) {
			continue
		}
		res.Watts = min(res.Watts, charges[i].Watts)
		res.Expires = r.Ledger.expiry(now)
	}
	return nil
}

// hasCaughtUp reports whether the pod index had seen every pod the budget's
// status may rely on (seen: its resourceVersion, read before the pods were),
// before a recomputation releases watts. Until this replica has recomputed a
// budget once, a previous writer may have pruned reservations of pods its
// cache showed and this one has not received yet: counting without them
// would release watts in use. Once the index has passed a version of the
// budget, every later pruning is this replica's own, from this index.
func (r *Reconciler) hasCaughtUp(b *powerv1alpha1.GPUPowerBudget, seen string) bool {
	if _, ok := r.caughtUp.Load(b.Name); ok {
		return true
	}
	if seen == "" {
		return false // nothing stored yet
	}
	c, err := resourceversion.CompareResourceVersion(seen, b.ResourceVersion)
	if err == nil && c < 0 {
		return false
	}
	// An unreadable version (not the API server's numbers) cannot be
	// waited for: the reconciler then trusts its index, as releases must go on.
	r.caughtUp.Store(b.Name, true)
	return true
}

// setStatus sets b's status from the live pods it charges and its unexpired
// reservations of pods not yet seen, and reports whether it is over its total.
func (r *Reconciler) setStatus(b *powerv1alpha1.GPUPowerBudget, live []policy.Charge, now time.Time) bool {
	st := &b.Status
	var reservations []policy.Reservation
	for _, res := range st.Reservations {
		reservations = append(reservations, policy.Reservation{UID: res.PodUID, Watts: res.Watts, Expires: res.Expires.Time})
	}
	c := policy.CountCommitted(live, reservations, now)
	st.CommittedWatts = c.Watts
	st.AvailableWatts = policy.SatSub(b.Spec.TotalWatts, c.Watts)
	st.Pods, st.GPUs = c.Pods, c.GPUs
	st.Reservations = slices.DeleteFunc(st.Reservations, func(x powerv1alpha1.Reservation) bool {
		_, kept := slices.BinarySearch(c.Kept, x.PodUID)
		return !kept
	})
	st.ObservedGeneration = b.Generation
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{
		Type: powerv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Reconciled",
		Message: "committed watts recomputed from live pods and reservations", ObservedGeneration: b.Generation,
	})
	over := c.Watts > b.Spec.TotalWatts
	overCond := metav1.Condition{Type: powerv1alpha1.ConditionOverCommitted, Status: metav1.ConditionFalse,
		Reason: "WithinBudget", Message: fmt.Sprintf("%d W of %d W committed", c.Watts, b.Spec.TotalWatts),
		ObservedGeneration: b.Generation}
	if over {
		overCond.Status, overCond.Reason = metav1.ConditionTrue, "LivePodsExceedTotal"
		overCond.Message = fmt.Sprintf("live pods commit %d W of %d W (total lowered, or pods admitted before the budget existed); new GPU pods are denied until %d W are released",
			c.Watts, b.Spec.TotalWatts, c.Watts-b.Spec.TotalWatts)
	}
	meta.SetStatusCondition(&st.Conditions, overCond)
	return over
}

// nextCheck is the resync period, or sooner when a reservation expires.
func (r *Reconciler) nextCheck(st *powerv1alpha1.GPUPowerBudgetStatus, now time.Time) time.Duration {
	next := r.Resync
	for _, res := range st.Reservations {
		if d := res.Expires.Sub(now) + 10*time.Millisecond; d < next {
			next = max(d, 10*time.Millisecond)
		}
	}
	return next
}

// charges lists the live GPU pods a budget charges: non-terminal pods in the
// namespaces it selects, at their cost.
func (r *Reconciler) charges(ctx context.Context, budget *powerv1alpha1.GPUPowerBudget) ([]policy.Charge, error) {
	sel, err := namespaceSelector(budget)
	if err != nil {
		return nil, err
	}
	// The list is read, never modified: skipping the cache's deep copies
	// keeps a recomputation cheap with thousands of namespaces.
	var namespaces corev1.NamespaceList
	if err := r.Client.List(ctx, &namespaces, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	count := budget.Spec.UnlimitedPods != powerv1alpha1.UnlimitedPodsIgnore
	var live []policy.Charge
	for _, ns := range namespaces.Items {
		if !sel.Matches(labels.Set(ns.Labels)) {
			continue
		}
		r.Ledger.Pods.EachGPUPod(ns.Name, func(uid types.UID, p *podindex.GPUPod) {
			if p.Finished {
				return
			}
			if cost := r.Catalog.Cost(p.Chargeable, r.Cluster, count); cost.GPUs > 0 {
				live = append(live, cost.Charges(uid, ns.Name)...)
			}
		})
	}
	return live, nil
}
