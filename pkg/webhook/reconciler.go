package webhook

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// BudgetReconciler recomputes each budget's status from the live pods it
// charges plus the reservations of pods not yet seen, so deleted and finished
// pods release their watts and reservations of pods that were never stored
// expire. It runs on the leader only. Its status writes are
// resourceVersion-checked like the webhook's, so it never drops a reservation
// it did not see.
type BudgetReconciler struct {
	Client   client.Client
	Catalog  policy.Catalog
	Cluster  policy.Cluster
	Recorder events.EventRecorder
	Metrics  *Metrics
	// Resync bounds how long drift (a missed event, an expired reservation)
	// can last.
	Resync time.Duration
	Now    func() time.Time
}

// settle coalesces a burst of pod events into one recomputation: during a
// scale-up each pod would otherwise cost a status write that the webhook's
// reservations then have to retry around.
const settle = 500 * time.Millisecond

// SetupWithManager registers the reconciler: budget changes trigger it at
// once, pod and namespace changes after settle.
func (r *BudgetReconciler) SetupWithManager(mgr ctrl.Manager) error {
	enqueueAll := func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		var list powerv1alpha1.GPUPowerBudgetList
		if err := r.Client.List(ctx, &list); err != nil {
			log.FromContext(ctx).Error(err, "Failed to list budgets")
			return
		}
		for _, b := range list.Items {
			q.AddAfter(reconcile.Request{NamespacedName: types.NamespacedName{Name: b.Name}}, settle)
		}
	}
	allBudgets := handler.Funcs{
		CreateFunc: func(ctx context.Context, _ event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q)
		},
		UpdateFunc: func(ctx context.Context, _ event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q)
		},
		DeleteFunc: func(ctx context.Context, _ event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			enqueueAll(ctx, q)
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("gpupowerbudget").
		For(&powerv1alpha1.GPUPowerBudget{}).
		Watches(&corev1.Pod{}, allBudgets).
		Watches(&corev1.Namespace{}, allBudgets).
		Complete(r)
}

// Reconcile implements reconcile.Reconciler.
func (r *BudgetReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	var budget powerv1alpha1.GPUPowerBudget
	if err := r.Client.Get(ctx, req.NamespacedName, &budget); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.forgetBudget(req.Name)
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	live, err := r.charges(ctx, &budget)
	if err != nil {
		return reconcile.Result{}, err
	}
	now := r.Now()
	var reservations []policy.Reservation
	for _, res := range budget.Status.Reservations {
		reservations = append(reservations, policy.Reservation{UID: res.PodUID, Watts: res.Watts, Expires: res.Expires.Time})
	}
	c := policy.Recompute(live, reservations, now)

	next := budget.Status.DeepCopy()
	next.CommittedWatts = c.Watts
	next.AvailableWatts = max(0, budget.Spec.TotalWatts-c.Watts)
	next.Pods, next.GPUs = int32(c.Pods), int32(c.GPUs)
	next.Reservations = slices.DeleteFunc(next.Reservations, func(x powerv1alpha1.Reservation) bool {
		_, kept := slices.BinarySearch(c.Kept, x.PodUID)
		return !kept
	})
	next.ObservedGeneration = budget.Generation
	meta.SetStatusCondition(&next.Conditions, metav1.Condition{
		Type: powerv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Reconciled",
		Message: "committed watts recomputed from live pods and reservations", ObservedGeneration: budget.Generation,
	})
	over := c.Watts > budget.Spec.TotalWatts
	overCond := metav1.Condition{Type: powerv1alpha1.ConditionOverCommitted, Status: metav1.ConditionFalse,
		Reason: "WithinBudget", Message: fmt.Sprintf("%d W of %d W committed", c.Watts, budget.Spec.TotalWatts),
		ObservedGeneration: budget.Generation}
	if over {
		overCond.Status, overCond.Reason = metav1.ConditionTrue, "LivePodsExceedTotal"
		overCond.Message = fmt.Sprintf("live pods commit %d W of %d W (total lowered, or pods admitted before the budget existed); new GPU pods are denied until %d W are released",
			c.Watts, budget.Spec.TotalWatts, c.Watts-budget.Spec.TotalWatts)
	}
	wasOver := meta.IsStatusConditionTrue(budget.Status.Conditions, powerv1alpha1.ConditionOverCommitted)
	meta.SetStatusCondition(&next.Conditions, overCond)

	r.Metrics.budgetState(budget.Name, c.Watts, budget.Spec.TotalWatts)
	if !equality.Semantic.DeepEqual(&budget.Status, next) {
		budget.Status = *next
		if err := r.Client.Status().Update(ctx, &budget); err != nil {
			if apierrors.IsConflict(err) {
				return reconcile.Result{RequeueAfter: time.Millisecond}, nil // the webhook wrote in between: recompute
			}
			return reconcile.Result{}, fmt.Errorf("update budget %s status: %w", budget.Name, err)
		}
		if over && !wasOver && r.Recorder != nil {
			r.Recorder.Eventf(&budget, nil, corev1.EventTypeWarning, "OverCommitted", "Reconcile", overCond.Message)
		}
	}
	return reconcile.Result{RequeueAfter: r.nextCheck(next, now)}, nil
}

// nextCheck is the resync period, or sooner when a reservation expires.
func (r *BudgetReconciler) nextCheck(st *powerv1alpha1.GPUPowerBudgetStatus, now time.Time) time.Duration {
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
func (r *BudgetReconciler) charges(ctx context.Context, budget *powerv1alpha1.GPUPowerBudget) ([]policy.Charge, error) {
	sel := labels.Everything()
	if budget.Spec.NamespaceSelector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(budget.Spec.NamespaceSelector); err != nil {
			return nil, fmt.Errorf("budget %s: namespaceSelector: %w", budget.Name, err)
		}
	}
	// The lists are read, never modified: skipping the cache's deep copies
	// keeps a recomputation cheap with tens of thousands of pods.
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
		var pods corev1.PodList
		if err := r.Client.List(ctx, &pods, client.InNamespace(ns.Name), client.UnsafeDisableDeepCopy); err != nil {
			return nil, fmt.Errorf("list pods in %s: %w", ns.Name, err)
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
				continue
			}
			cost := r.Catalog.CostOf(p, r.Cluster, count)
			if cost.GPUs == 0 {
				continue
			}
			live = append(live, policy.Charge{UID: p.UID, Watts: cost.Watts, GPUs: cost.GPUs})
		}
	}
	return live, nil
}
