package budget

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Ledger charges admitted pods to the GPUPowerBudgets that select their
// namespace. A pod's cost is reserved in each budget's status by a
// resourceVersion-checked update before the pod is admitted, so committed
// watts never exceed a budget's total, whatever the number of webhook
// replicas. Within one replica the reservations of each budget are serialised
// and written in batches, as ResourceQuota admission does; replicas that do
// not hold the writer Lease forward their reservations to the one that does,
// so that batches are large and writes do not conflict.
type Ledger struct {
	// Cache reads budgets and namespaces.
	Cache client.Reader
	// Pods is every pod as the API server last showed it: the names taken,
	// and the GPU pods whose reservations can be pruned and that the
	// reconciler charges.
	Pods *podindex.Index
	// API reads budgets fresh after a conflict.
	API client.Reader
	// Client writes budget status.
	Client  client.Client
	Catalog policy.Catalog
	// Cluster prices pods the cache shows, to prune their reservations.
	Cluster policy.Cluster
	// TTL is how long a reservation counts if its pod never appears.
	TTL time.Duration
	// Attempts bounds the writes of one batch before its pods are denied.
	Attempts int
	Metrics  *Metrics
	Now      func() time.Time
	// Leading reports whether this replica holds the writer Lease (nil:
	// always). Only the writer prunes reservations: it is also the reconciler,
	// and it must count from the same cache the pods it pruned.
	Leading func() bool
	// Peers forwards reservations to the writer; nil: every replica writes.
	Peers *Peers
	// TrustsIndex reports whether Pods has seen every pod write a budget's
	// committed watts may rely on (the reconciler's hasCaughtUp; nil:
	// always). Only then, and only on the writer, does what the pods it
	// shows charge a named claim come off a new sharer's charge.
	TrustsIndex func(*powerv1alpha1.GPUPowerBudget) bool

	queues sync.Map // budget name -> *budgetQueue
}

// budgetQueue serialises one budget's reservations inside this replica.
type budgetQueue struct {
	mu      sync.Mutex
	pending []*reserveRequest
	running bool
	// last is the budget as this replica last wrote it: the next batch starts
	// from it instead of a GET, and pays a GET only after a conflict.
	last *powerv1alpha1.GPUPowerBudget
}

// op is what a request asks of its budget's ledger.
type op int

const (
	// opCharge reserves a pod's cost (or a raise).
	opCharge op = iota
	// opRelease undoes the charge an admission made when another budget
	// then denied the pod.
	opRelease
	// opRecount is the reconciler's: rewrite the status from the live pods
	// before the batch is decided, so the recount applies to exactly the
	// version the batch writes.
	opRecount
)

type reserveRequest struct {
	op    op
	uid   types.UID
	pod   string
	watts int64 // the pod's whole cost, recorded in the reservation
	delta int64 // what committed watts grow by (the cost, or a raise)
	// prior, on a release, is the reservation the pod held before this
	// admission (nil: none): a reservation it held before keeps counting.
	prior *powerv1alpha1.Reservation
	// reconciler, on a recount, is the reconciler that asked for it.
	reconciler *Reconciler
	done       chan reserveResult
}

type reserveResult struct {
	ok    bool
	state policy.BudgetState // when !ok: the budget as the decision saw it
	// wrote is set when this request changed the pod's reservation (not
	// when the budget already held it): only then is there something for a
	// release to undo. prior is the reservation it replaced (nil: none).
	wrote bool
	prior *powerv1alpha1.Reservation
	// delta is what the charge added to committed watts: what a release
	// takes off.
	delta int64
	err   error
	// recounted is what a recount found on the version written.
	recounted recountResult
}

// Selecting returns the budgets that charge pods of a namespace, by name. A
// budget whose namespaceSelector cannot be evaluated selects nothing: it can
// only have been written before validation of budgets existed, its status
// says why (the reconciler), and pods in other namespaces must not fail
// because of it. The budgets are the cache's own, not copies (every GPU pod
// admission reads them, and a budget's status holds a reservation per pod in
// flight): callers read them and never write.
func (b *Ledger) Selecting(ctx context.Context, namespace string) ([]powerv1alpha1.GPUPowerBudget, error) {
	var list powerv1alpha1.GPUPowerBudgetList
	if err := b.Cache.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list budgets: %w", err)
	}
	if len(list.Items) == 0 {
		return nil, nil
	}
	ns, err := b.namespace(ctx, namespace)
	if err != nil {
		return nil, err
	}
	var out []powerv1alpha1.GPUPowerBudget
	for _, budget := range list.Items {
		if sel, err := namespaceSelector(&budget); err == nil && sel.Matches(labels.Set(ns.Labels)) {
			out = append(out, budget)
		}
	}
	slices.SortFunc(out, func(a, b powerv1alpha1.GPUPowerBudget) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// namespace reads a namespace from the cache, or from the API server when
// the cache has not seen it yet (a pod created right after its namespace).
func (b *Ledger) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	var ns corev1.Namespace
	err := b.Cache.Get(ctx, types.NamespacedName{Name: name}, &ns)
	if apierrors.IsNotFound(err) {
		err = b.API.Get(ctx, types.NamespacedName{Name: name}, &ns)
	}
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return &ns, nil
}

// namespaceSelector is a budget's namespaceSelector as a selector;
// absent selects every namespace.
func namespaceSelector(b *powerv1alpha1.GPUPowerBudget) (labels.Selector, error) {
	if b.Spec.NamespaceSelector == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(b.Spec.NamespaceSelector)
	if err != nil {
		return nil, fmt.Errorf("budget %s: namespaceSelector: %w", b.Name, err)
	}
	return sel, nil
}

// DefaultRules returns the default limits of the budgets that select the
// namespace, budgets in name order, each budget's entries in order.
func (b *Ledger) DefaultRules(ctx context.Context, namespace string) ([]policy.DefaultRule, error) {
	budgets, err := b.Selecting(ctx, namespace)
	if err != nil {
		return nil, err
	}
	var rules []policy.DefaultRule
	for _, budget := range budgets {
		for i, d := range budget.Spec.Defaults {
			sel := labels.Everything()
			if d.PodSelector != nil {
				if sel, err = metav1.LabelSelectorAsSelector(d.PodSelector); err != nil {
					continue // reported on the budget's status, as in Selecting
				}
			}
			rules = append(rules, policy.DefaultRule{Selector: sel, Watts: policy.Watts(d.Watts),
				Origin: fmt.Sprintf("GPUPowerBudget %s defaults[%d]", budget.Name, i)})
		}
	}
	return rules, nil
}

// Admit charges the pod to every budget that selects its namespace and
// returns a denial message when one of them is short. Lowering a cost is
// always admitted; a dry run is checked against the budgets and reserves
// nothing. A pod's own GPUs are charged to the pod, and each named
// ResourceClaim's to the claim, once, at the most any pod using it costs
// (policy.Cost.Charges): a pod that shares a claim already charged at its
// cost adds nothing. A new pod with devices budgets cannot charge (claims
// whose GPUs cannot be counted, another DeviceClass's resource: claims is
// what its claims ask) is denied where a budget applies
// (policy.Unchargeable).
func (b *Ledger) Admit(ctx context.Context, op admissionv1.Operation, pod, old *corev1.Pod, cluster policy.Cluster, claims policy.ClaimsDemand, dryRun bool) (string, error) {
	budgets, err := b.Selecting(ctx, pod.Namespace)
	if err != nil || len(budgets) == 0 {
		return "", err
	}
	if what := policy.Unchargeable(&pod.Spec, claims, cluster); op == admissionv1.Create && what != "" {
		names := make([]string, len(budgets))
		for i, bu := range budgets {
			names[i] = fmt.Sprintf("%q", bu.Name)
		}
		return policy.NotCharged(names, what), nil
	}
	charges, deltas := b.chargesOf(op, pod, old, cluster, budgets)
	if len(charges) == 0 {
		return "", nil
	}
	if dryRun {
		var short []policy.BudgetState
		for _, bu := range budgets {
			if deltas[bu.Name] <= 0 {
				continue
			}
			state, err := b.freshState(ctx, bu.Name)
			if err != nil {
				return "", err
			}
			if !state.Fits(deltas[bu.Name]) {
				short = append(short, state)
			}
		}
		if len(short) == 0 {
			return "", nil
		}
		return b.denial(charges[0].cost, deltas[short[0].Name], short), nil
	}
	if pod.UID == "" {
		return "", errors.New("pod has no UID to key its budget reservation by")
	}
	if op == admissionv1.Create {
		if taken, err := b.nameTaken(ctx, pod); err != nil || taken != "" {
			return taken, err
		}
	}

	logger := log.FromContext(ctx)
	written := make([]reserveResult, len(charges))
	for i, c := range charges {
		res := b.reserve(ctx, c.budget, &reserveRequest{
			uid: c.key, pod: pod.Namespace + "/" + pod.Name, watts: c.watts, delta: c.delta,
		})
		if res.ok {
			written[i] = res
			continue
		}
		for j, done := range charges[:i] {
			if !written[j].wrote {
				continue // the budget held it already: nothing of ours to undo
			}
			release := &reserveRequest{op: opRelease, uid: done.key, watts: done.watts, delta: written[j].delta, prior: written[j].prior}
			if r := b.reserve(ctx, done.budget, release); !r.ok {
				// The reservation expires by itself after TTL.
				logger.Error(r.err, "Failed to release reservation", "budget", done.budget, "pod", klog.KObj(pod))
			}
		}
		if res.err != nil {
			return "", res.err
		}
		// Name every budget that is short, not only the first.
		short := []policy.BudgetState{res.state}
		for _, bu := range budgets {
			if bu.Name == c.budget || deltas[bu.Name] <= 0 || slices.ContainsFunc(charges[:i], func(d podCharge) bool { return d.budget == bu.Name }) {
				continue
			}
			if state, err := b.freshState(ctx, bu.Name); err == nil && !state.Fits(deltas[bu.Name]) {
				short = append(short, state)
			}
		}
		return b.denial(c.cost, deltas[c.budget], short), nil
	}
	return "", nil
}

// podCharge is one reservation an admission asks of a budget.
type podCharge struct {
	budget string
	// key is the pod's UID, or its ClaimReservationKey for a named claim.
	key types.UID
	// cost is the pod's whole cost, for messages; watts is the key's.
	cost  policy.Cost
	watts int64
	// delta is what committed watts grow by: watts less what the key
	// already charges (the pod before an update, the other pods that use
	// the claim).
	delta int64
}

// chargesOf lists the reservations a pod asks of each budget, with what
// each budget's committed watts grow by in all.
func (b *Ledger) chargesOf(op admissionv1.Operation, pod, old *corev1.Pod, cluster policy.Cluster, budgets []powerv1alpha1.GPUPowerBudget) ([]podCharge, map[string]int64) {
	var charges []podCharge
	deltas := map[string]int64{}
	for i := range budgets {
		budget := &budgets[i]
		count := budget.Spec.UnlimitedPods != powerv1alpha1.UnlimitedPodsIgnore
		cost := b.Catalog.CostOf(pod, cluster, count)
		before := map[types.UID]int64{}
		if op == admissionv1.Update {
			for _, c := range b.Catalog.CostOf(old, cluster, count).Charges(old.UID, old.Namespace) {
				before[c.UID] = c.Watts
			}
		}
		for _, c := range cost.Charges(pod.UID, pod.Namespace) {
			key, delta, ask := c.UID, c.Watts-before[c.UID], c.Watts > before[c.UID]
			if c.Shared {
				// The pod's own reservation for the claim, even when the
				// pods already on it charge enough: they may go before
				// the cache shows this one. What it adds is decided where
				// it is written (claimDelta); this replica's cache only
				// estimates it, for messages and dry runs.
				key, delta = policy.ClaimReservationKey(c.UID, pod.UID), c.Watts-max(before[c.UID], b.claimCharge(c.UID, count))
				ask = ask || op == admissionv1.Create && c.Watts > 0
			}
			if ask {
				delta = max(delta, 0)
				charges = append(charges, podCharge{budget: budget.Name, key: key, cost: cost, watts: c.Watts, delta: delta})
				deltas[budget.Name] = policy.SatAdd(deltas[budget.Name], delta)
			}
		}
	}
	return charges, deltas
}

// claimCharge is what a named claim (its ClaimKey) charges through the live
// pods the index shows using it: the most any of them costs for it.
func (b *Ledger) claimCharge(key types.UID, countUnlimited bool) int64 {
	namespace, claim, ok := policy.ClaimOfKey(key)
	if !ok {
		return 0
	}
	var most int64
	b.Pods.EachGPUPod(namespace, func(uid types.UID, p *podindex.GPUPod) {
		if p.Finished || p.Claims == nil || !slices.ContainsFunc(p.Claims.Shared, func(s policy.SharedClaim) bool { return s.Claim == claim }) {
			return
		}
		for _, c := range b.Catalog.Cost(p.Chargeable, b.Cluster, countUnlimited).Charges(uid, namespace) {
			if c.UID == key {
				most = max(most, c.Watts)
			}
		}
	})
	return most
}

// nameTaken denies the create of a pod whose name a live pod of another UID
// holds: the API server refuses it after admission, and a reservation made
// for it would hold watts for nothing until it expires; repeated, a tenant
// could keep a shared budget full. The cache is asked first (a pod created
// moments ago may be missing, which only costs a reservation), the API
// server confirms, so a pod deleted since is not refused.
func (b *Ledger) nameTaken(ctx context.Context, pod *corev1.Pod) (string, error) {
	key := types.NamespacedName{Namespace: pod.Namespace, Name: pod.Name}
	if pod.Name == "" {
		return "", nil // generateName: the API server picks a free name
	}
	if cached, ok := b.Pods.Get(pod.Namespace, pod.Name); !ok || cached.UID == pod.UID {
		return "", nil
	}
	var live corev1.Pod
	err := b.API.Get(ctx, key, &live)
	switch {
	case apierrors.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("get pod %s: %w", key, err)
	case live.UID == pod.UID:
		return "", nil
	}
	return fmt.Sprintf("pods %q already exists in namespace %q: no GPU power is reserved for a create the API server will refuse", pod.Name, pod.Namespace), nil
}

func (b *Ledger) denial(cost policy.Cost, delta int64, short []policy.BudgetState) string {
	if len(short) == 0 {
		return ""
	}
	b.Metrics.budgetDenied(short)
	return policy.BudgetDenial(cost, delta, short)
}

// freshState reads a budget from the API server: a denial is never based on
// a cache that may not have seen a release yet.
func (b *Ledger) freshState(ctx context.Context, name string) (policy.BudgetState, error) {
	var budget powerv1alpha1.GPUPowerBudget
	if err := b.API.Get(ctx, types.NamespacedName{Name: name}, &budget); err != nil {
		return policy.BudgetState{}, fmt.Errorf("get budget %s: %w", name, err)
	}
	return stateOf(&budget), nil
}

func stateOf(b *powerv1alpha1.GPUPowerBudget) policy.BudgetState {
	return policy.BudgetState{Name: b.Name, Total: b.Spec.TotalWatts, Committed: b.Status.CommittedWatts}
}

// reserve hands r to the writer replica, or, when this replica is the
// writer or the writer cannot be reached, writes it here: every replica's
// writes are resourceVersion-checked, so the writer only saves conflicts.
func (b *Ledger) reserve(ctx context.Context, budget string, r *reserveRequest) reserveResult {
	if b.Peers != nil && !b.leading() {
		if res, ok := b.Peers.forward(ctx, budget, r); ok {
			return res
		}
	}
	return b.enqueue(ctx, budget, r)
}

func (b *Ledger) leading() bool { return b.Leading == nil || b.Leading() }

// enqueue queues r on its budget and waits for the batch that carries it.
func (b *Ledger) enqueue(ctx context.Context, budget string, r *reserveRequest) reserveResult {
	r.done = make(chan reserveResult, 1)
	v, _ := b.queues.LoadOrStore(budget, &budgetQueue{})
	q := v.(*budgetQueue)
	q.mu.Lock()
	q.pending = append(q.pending, r)
	if !q.running {
		q.running = true
		// The drain outlives this request: a batch is written for all its
		// requests even if the first one's client gave up.
		go b.drain(context.WithoutCancel(ctx), budget, q)
	}
	q.mu.Unlock()
	select {
	case res := <-r.done:
		return res
	case <-ctx.Done():
		return reserveResult{err: fmt.Errorf("reserve GPU power in budget %s: %w", budget, ctx.Err())}
	}
}

func (b *Ledger) drain(ctx context.Context, budget string, q *budgetQueue) {
	for {
		q.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		results := b.commit(ctx, budget, q, batch)
		for i, r := range batch {
			r.done <- results[i]
		}
	}
}

// commit decides a batch against the budget and writes its reservations in
// one resourceVersion-checked status update, re-reading and re-deciding the
// whole batch after a conflict.
func (b *Ledger) commit(ctx context.Context, name string, q *budgetQueue, batch []*reserveRequest) []reserveResult {
	results := make([]reserveResult, len(batch))
	for attempt := range b.Attempts {
		budget, fresh := b.latest(ctx, name, q.last), false
		if budget == nil || attempt > 0 {
			fresh = true
			budget = &powerv1alpha1.GPUPowerBudget{}
			if err := b.API.Get(ctx, types.NamespacedName{Name: name}, budget); err != nil {
				q.last = nil
				return fill(results, reserveResult{err: fmt.Errorf("get budget %s: %w", name, err)})
			}
		}
		budget = budget.DeepCopy()
		changed, err := b.prepareBase(ctx, budget, batch, results)
		if err != nil {
			return fill(results, reserveResult{err: err})
		}
		applied, reserved, readFresh := b.apply(budget, batch, results, fresh)
		changed = changed || applied
		if readFresh {
			q.last = nil
			continue
		}
		if !changed {
			return results
		}
		budget.Status.AvailableWatts = policy.SatSub(budget.Spec.TotalWatts, budget.Status.CommittedWatts)
		err = b.Client.Status().Update(ctx, budget)
		switch {
		case err == nil:
			q.last = budget
			b.Metrics.reservations(name, reserved, attempt)
			return results
		case apierrors.IsConflict(err):
			b.Metrics.reservationConflict(name)
			// Another replica wrote first: back off a little, with
			// jitter, so the writers do not collide again.
			select {
			case <-time.After(conflictBackoff()):
			case <-ctx.Done():
				return fill(results, reserveResult{err: fmt.Errorf("reserve GPU power in budget %s: %w", name, ctx.Err())})
			}
			continue
		default:
			q.last = nil
			return fill(results, reserveResult{err: fmt.Errorf("reserve GPU power in budget %s: %w", name, err)})
		}
	}
	q.last = nil
	return fill(results, reserveResult{err: fmt.Errorf("reserve GPU power in budget %s: still conflicting after %d attempts; retry", name, b.Attempts)})
}

// apply decides each charge and release of a batch in order
// (policy.DecideReservation) against budget, as the earlier ones left it,
// and applies the decisions to its status, setting their results. It
// reports whether the status changed, how many reservations it wrote, and
// whether the base must be read fresh before anything is denied.
func (b *Ledger) apply(budget *powerv1alpha1.GPUPowerBudget, batch []*reserveRequest, results []reserveResult, fresh bool) (changed bool, reserved int, readFresh bool) {
	st := &budget.Status
	now := b.Now()
	for i, r := range batch {
		if r.op == opRecount {
			continue // its result was set by prepareBase
		}
		j := slices.IndexFunc(st.Reservations, func(x powerv1alpha1.Reservation) bool { return x.PodUID == r.uid })
		var held *policy.HeldReservation
		if j >= 0 {
			held = &policy.HeldReservation{Watts: st.Reservations[j].Watts, Expires: st.Reservations[j].Expires.Time}
		}
		ask := policy.ReservationAsk{Release: r.op == opRelease, Watts: r.watts, Delta: r.delta}
		if _, _, isClaim := policy.ClaimReservationOf(r.uid); isClaim {
			ask.Delta = b.claimDelta(budget, r, now)
		}
		switch policy.DecideReservation(ask, held, stateOf(budget), fresh, now) {
		case policy.ReservationUndo:
			if r.prior != nil {
				st.Reservations[j] = *r.prior
			} else {
				st.Reservations = slices.Delete(st.Reservations, j, j+1)
			}
			st.CommittedWatts = policy.SatSub(st.CommittedWatts, ask.Delta)
			changed = true
			results[i] = reserveResult{ok: true}
		case policy.ReservationNothingToUndo:
			results[i] = reserveResult{ok: true}
		case policy.ReservationAlreadyCharged:
			if exp := b.expiry(now); st.Reservations[j].Expires.Before(&exp) {
				st.Reservations[j].Expires, changed = exp, true
			}
			results[i] = reserveResult{ok: true}
		case policy.ReservationCharge:
			res := powerv1alpha1.Reservation{PodUID: r.uid, Pod: r.pod, Watts: r.watts, Expires: b.expiry(now)}
			var prior *powerv1alpha1.Reservation
			if j >= 0 {
				prior = st.Reservations[j].DeepCopy()
				st.Reservations[j] = res
			} else {
				st.Reservations = append(st.Reservations, res)
			}
			st.CommittedWatts = policy.SatAdd(st.CommittedWatts, ask.Delta)
			changed = true
			reserved++
			results[i] = reserveResult{ok: true, wrote: true, prior: prior, delta: ask.Delta}
		case policy.ReservationDeny:
			results[i] = reserveResult{state: stateOf(budget)}
		case policy.ReservationReadFresh:
			return changed, reserved, true
		}
	}
	return changed, reserved, false
}

// claimDelta is what a pod's reservation on a named claim adds to committed
// watts, or, on a release, takes off, decided where the batch is written.
// Committed holds, for the claim, the most of its live charge and the pods'
// pending reservations on it: a charge adds only what r asks beyond that,
// and a release takes off only what the claim's charge falls by without
// r's reservation (other pods may have been admitted on it for nothing
// since), at most what r's charge added. The live charge is read from this
// replica's pod index only when it is the writer and its index has caught
// up with the budget (the index its recounts use): another replica's
// cache, or one behind the budget, may still show a pod whose watts a
// recount has released. Without it a release takes off nothing: the next
// recount does.
func (b *Ledger) claimDelta(budget *powerv1alpha1.GPUPowerBudget, r *reserveRequest, now time.Time) int64 {
	claim, _, _ := policy.ClaimReservationOf(r.uid)
	var others, own int64 // pending reservations on the claim: the other pods', r's
	for _, res := range budget.Status.Reservations {
		if other, _, ok := policy.ClaimReservationOf(res.PodUID); ok && other == claim && now.Before(res.Expires.Time) {
			if res.PodUID == r.uid {
				own = res.Watts
			} else {
				others = max(others, res.Watts)
			}
		}
	}
	trusted := b.leading() && (b.TrustsIndex == nil || b.TrustsIndex(budget))
	var live int64
	if trusted {
		live = b.claimCharge(claim, budget.Spec.UnlimitedPods != powerv1alpha1.UnlimitedPodsIgnore)
	}
	if r.op == opRelease {
		if !trusted {
			return 0
		}
		return min(r.delta, max(0, max(live, others, own)-max(live, others)))
	}
	return max(0, r.watts-max(live, others))
}

// expiry is when a reservation made now stops counting if its pod has not
// appeared: TTL from now, rounded up to the whole second metav1.Time keeps.
func (b *Ledger) expiry(now time.Time) metav1.Time {
	return metav1.NewTime(now.Add(b.TTL + time.Second - 1).Truncate(time.Second))
}

// latest is the newer of the budget as this replica last wrote it and as its
// cache shows it (which has seen other writers' updates): the base a batch
// starts from without a GET. Nil when neither is known.
func (b *Ledger) latest(ctx context.Context, name string, last *powerv1alpha1.GPUPowerBudget) *powerv1alpha1.GPUPowerBudget {
	var cached powerv1alpha1.GPUPowerBudget
	if err := b.Cache.Get(ctx, types.NamespacedName{Name: name}, &cached); err != nil {
		return last
	}
	if last != nil {
		if c, err := resourceversion.CompareResourceVersion(last.ResourceVersion, cached.ResourceVersion); err != nil || c >= 0 {
			return last
		}
	}
	return &cached
}

// prepareBase prepares the base of a batch: the writer prunes the
// reservations of pods its cache shows, and runs the recount the batch
// carries, so that it applies to exactly the version written (its result
// goes into results). Other replicas prune nothing: a reservation may only
// vanish where the reconciler's own cache counts its pod.
func (b *Ledger) prepareBase(ctx context.Context, budget *powerv1alpha1.GPUPowerBudget, batch []*reserveRequest, results []reserveResult) (bool, error) {
	changed := b.leading() && b.prune(ctx, budget)
	for i, r := range batch {
		if r.op != opRecount {
			continue
		}
		found, c, err := r.reconciler.recount(ctx, budget)
		if err != nil {
			return false, err
		}
		results[i] = reserveResult{ok: true, recounted: found}
		changed = changed || c
	}
	return changed, nil
}

// prune drops the reservations of pods this replica's index already shows at
// the reserved cost, in a namespace its cache holds and the budget selects:
// from then on the reconciler counts the pod itself (from the same index and
// cache), so committed watts do not change. It keeps the status, which every
// write carries whole, as small as the number of pods in flight instead of
// growing with every admission until the reconciler catches up.
func (b *Ledger) prune(ctx context.Context, budget *powerv1alpha1.GPUPowerBudget) bool {
	sel, err := namespaceSelector(budget)
	if err != nil {
		return false
	}
	count := budget.Spec.UnlimitedPods != powerv1alpha1.UnlimitedPodsIgnore
	before := len(budget.Status.Reservations)
	budget.Status.Reservations = slices.DeleteFunc(budget.Status.Reservations, func(r powerv1alpha1.Reservation) bool {
		ns, name, ok := strings.Cut(r.Pod, "/")
		if !ok {
			return false
		}
		claim, uid, isClaim := policy.ClaimReservationOf(r.PodUID)
		if !isClaim {
			uid = r.PodUID
		}
		pod, ok := b.Pods.Get(ns, name)
		if !ok || pod.UID != uid || pod.GPU == nil || pod.GPU.Finished {
			return false
		}
		var charged int64
		if isClaim {
			charged = b.claimCharge(claim, count)
		} else {
			charged = b.Catalog.Cost(pod.GPU.Chargeable, b.Cluster, count).Charges(pod.UID, ns)[0].Watts
		}
		if charged == 0 || charged < r.Watts {
			return false
		}
		var cached corev1.Namespace
		err := b.Cache.Get(ctx, types.NamespacedName{Name: ns}, &cached)
		return err == nil && sel.Matches(labels.Set(cached.Labels)) // else the reconciler would not count the pod
	})
	return len(budget.Status.Reservations) != before
}

// conflictBackoff is a short random pause. It does not grow with the
// attempt: a growing backoff lets the replicas that won keep winning and
// starves the one that lost (measured: p99 3 s with exponential backoff, 1 s
// with this; docs/benchmarks.md).
func conflictBackoff() time.Duration {
	return rand.N(5 * time.Millisecond)
}

func fill(results []reserveResult, r reserveResult) []reserveResult {
	for i := range results {
		results[i] = r
	}
	return results
}
