package policy

// The budget algorithm: what a pod costs a budget (Cost, Catalog.CostOf),
// whether a request fits (BudgetState, DecideReservation: the ledger's
// decision on each charge and release), the denial operators read
// (BudgetDenial), and committed watts counted from the live pods and the
// reservations of pods not yet seen (CountCommitted). pkg/budget carries it
// out against the API server; docs/budgets.md explains it.

import (
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Cost is what a pod charges a budget.
type Cost struct {
	// Watts is per-GPU watts x GPUs.
	Watts int64
	// GPUs is the pod's effective whole-GPU request, its claims' GPUs
	// included.
	GPUs int64
	// PerGPU is the per-GPU watts the cost was computed from.
	PerGPU Watts
	// Unlimited is set when the pod has no limit and PerGPU is its products'
	// default board limit.
	Unlimited bool
	// Shared are the GPUs (of GPUs) of the named ResourceClaims the pod
	// uses: each is charged once, to the claim, however many pods share it.
	Shared []SharedClaim
}

// CostOf computes a pod's cost: its limit x GPUs. A GPU pod without a valid
// limit costs, when countUnlimited, the highest default board limit among the
// products it can land on (the most it can draw), and nothing otherwise.
// Where none of them is in the catalog (a new GPU generation, a node not
// labelled yet) it costs the catalog's highest default: too much rather
// than nothing.
func (c Catalog) CostOf(pod *corev1.Pod, cluster Cluster, countUnlimited bool) Cost {
	return c.Cost(ChargeableOf(pod), cluster, countUnlimited)
}

// Chargeable is what of a pod its cost depends on, read once so that a cache
// of every GPU pod keeps a few words of each rather than the pod.
type Chargeable struct {
	// GPUs is the pod's own effective whole-GPU request: its extended
	// resources, and the claims made from its templates.
	GPUs int64
	// Limit is its valid per-GPU limit; 0 when it has none.
	Limit Watts
	// Placement, for a GPU pod without a limit, is where it can land: its
	// cost is the most the products there can draw. Nil otherwise.
	Placement *Placement
	// Claims is set for a pod whose resourceClaims get GPUs
	// (AnnotationClaimGPUs): Claims.Own is counted in GPUs.
	Claims *ClaimGPUs
}

// Charged reports whether the pod charges budgets at all.
func (p Chargeable) Charged() bool { return p.GPUs > 0 || p.Claims != nil && len(p.Claims.Shared) > 0 }

// ChargeableOf reads what a pod's cost depends on, its AnnotationClaimGPUs
// taken as it stands (the pod index checks its signature, and charges
// counts nobody signed as a pod without a limit).
func ChargeableOf(pod *corev1.Pod) Chargeable {
	p := Chargeable{GPUs: DemandOf(&pod.Spec).GPUs}
	if value, ok := pod.Annotations[AnnotationClaimGPUs]; ok && len(pod.Spec.ResourceClaims) > 0 {
		if claims, ok := ParseClaimGPUs(value, pod.Spec.ResourceClaims); ok {
			p.Claims = &claims
			p.GPUs = SatAdd(p.GPUs, claims.Own)
		}
	}
	if !p.Charged() {
		return Chargeable{}
	}
	if w, ok := ParseLimit(pod.Annotations[AnnotationPowerLimit]); ok {
		p.Limit = w
	} else if p.Claims == nil {
		pl := PlacementOf(&pod.Spec)
		p.Placement = &pl
	}
	return p
}

// Cost is CostOf for what was read of a pod. A pod without a limit whose
// claims get GPUs costs the catalog's highest default per GPU: the products
// its claims could get were matched at admission, and are not on the pod.
func (c Catalog) Cost(p Chargeable, cluster Cluster, countUnlimited bool) Cost {
	cost := Cost{GPUs: p.GPUs}
	if p.Claims != nil {
		cost.Shared = p.Claims.Shared
		for _, s := range p.Claims.Shared {
			cost.GPUs = SatAdd(cost.GPUs, s.GPUs)
		}
	}
	switch {
	case cost.GPUs == 0:
		return Cost{}
	case p.Limit > 0:
		cost.PerGPU = p.Limit
	case !countUnlimited:
		return Cost{GPUs: cost.GPUs, Unlimited: true, Shared: cost.Shared}
	default:
		cost.PerGPU, cost.Unlimited = c.unlimitedPerGPU(p, cluster), true
	}
	cost.Watts = SatMul(int64(cost.PerGPU), cost.GPUs)
	return cost
}

// unlimitedPerGPU is what a GPU of a pod without a limit can draw.
func (c Catalog) unlimitedPerGPU(p Chargeable, cluster Cluster) Watts {
	var perGPU Watts
	var labels []string
	switch {
	case p.Claims != nil:
	case p.Placement != nil:
		labels = p.Placement.Candidates(cluster).Labels
	default:
		labels = cluster.GPUProducts()
	}
	for _, label := range labels {
		if r, ok := c.Lookup(label); ok {
			perGPU = max(perGPU, r.DefaultWatts())
		}
	}
	if perGPU == 0 {
		for _, r := range c {
			perGPU = max(perGPU, r.DefaultWatts())
		}
	}
	return perGPU
}

// Charges splits a pod's cost into what it adds to a budget: its own GPUs,
// keyed by its UID (always, so that the pod is counted), and each named
// claim's, keyed by the claim (ClaimKey), once however many pods share it.
func (c Cost) Charges(uid types.UID, namespace string) []Charge {
	own := Charge{UID: uid, GPUs: c.GPUs}
	out := make([]Charge, 1, 1+len(c.Shared))
	for _, s := range c.Shared {
		w := SatMul(int64(c.PerGPU), s.GPUs)
		out = append(out, Charge{UID: ClaimKey(namespace, s.Claim), Watts: w, GPUs: s.GPUs, Shared: true, Pod: uid})
		own.GPUs -= s.GPUs
	}
	own.Watts = SatMul(int64(c.PerGPU), own.GPUs)
	out[0] = own
	return out
}

// claimKeyPrefix starts the keys of named claims' charges: no pod UID
// (the API server's, a UUID) has it.
const claimKeyPrefix = "resourceclaim:"

// ClaimKey is what a named ResourceClaim's live charge is keyed by, beside
// pods' UIDs.
func ClaimKey(namespace, claim string) types.UID {
	return types.UID(claimKeyPrefix + namespace + "/" + claim)
}

// ClaimOfKey returns the claim a ClaimKey names; ok is false for any other
// key.
func ClaimOfKey(key types.UID) (namespace, claim string, ok bool) {
	rest, found := strings.CutPrefix(string(key), claimKeyPrefix)
	namespace, claim, ok = strings.Cut(rest, "/")
	if !found || !ok || namespace == "" || claim == "" || strings.Contains(claim, "/") {
		return "", "", false
	}
	return namespace, claim, true
}

// ClaimReservationKey keys the reservation a pod's admission makes for a
// named claim's charge: the claim's key and the pod's UID. It counts until
// that pod is seen, whichever other pods use the claim meanwhile.
func ClaimReservationKey(claim, pod types.UID) types.UID { return claim + "/" + pod }

// ClaimReservationOf splits a ClaimReservationKey; ok is false for a pod's
// own reservation.
func ClaimReservationOf(key types.UID) (claim, pod types.UID, ok bool) {
	i := strings.LastIndexByte(string(key), '/')
	if i < 0 {
		return "", "", false
	}
	claim, pod = key[:i], key[i+1:]
	if _, _, ok := ClaimOfKey(claim); !ok || pod == "" {
		return "", "", false
	}
	return claim, pod, true
}

// String renders the cost the way denials show it: "1000 W (4 GPUs x 250 W)".
func (c Cost) String() string {
	gpus := "GPUs"
	if c.GPUs == 1 {
		gpus = "GPU"
	}
	s := fmt.Sprintf("%d W (%d %s x %d W", c.Watts, c.GPUs, gpus, c.PerGPU)
	if c.Unlimited {
		s += " default board limit, no power limit set"
	}
	return s + ")"
}

// BudgetState is a budget's arithmetic at one moment.
type BudgetState struct {
	Name             string
	Total, Committed int64
}

// Available is what is left, never negative.
func (b BudgetState) Available() int64 { return SatSub(b.Total, b.Committed) }

// Fits reports whether adding watts keeps committed within the total. A
// committed sum below zero (a status someone else wrote) fits nothing.
func (b BudgetState) Fits(watts int64) bool {
	return b.Committed >= 0 && SatAdd(b.Committed, watts) <= b.Total
}

// BudgetDenial is the message for a pod that does not fit one or more budgets,
// worded like ResourceQuota's "exceeded quota" so operators recognise it.
func BudgetDenial(requested Cost, delta int64, short []BudgetState) string {
	parts := make([]string, len(short))
	for i, b := range short {
		req := requested.String()
		if delta != requested.Watts {
			req = fmt.Sprintf("%d W more (now %s)", delta, requested)
		}
		parts[i] = fmt.Sprintf("exceeded GPU power budget %q: requested %s, committed %d W of %d W, available %d W",
			b.Name, req, b.Committed, b.Total, b.Available())
	}
	return strings.Join(parts, "; ") + "; lower the per-GPU limit, use fewer GPUs, or ask for a larger budget"
}

// Unchargeable says why budgets could not charge a new pod's devices, ""
// when they can. Budgets charge a claims pod by the GPU counts the webhook
// writes on it (AnnotationClaimGPUs), so claims whose GPUs cannot be counted
// (claims is what they ask) are refused where a budget applies, as is a
// DeviceClass resource other than NVIDIA's (another class may be served by
// GPUs budgets do not know) and any other extended resource a DeviceClass
// serves with NVIDIA GPUs (OtherDRAGPUResources).
func Unchargeable(spec *corev1.PodSpec, claims ClaimsDemand, cluster Cluster) string {
	switch {
	case len(spec.ResourceClaims) > 0 && !claims.Resolved:
		return "its resourceClaims (this cluster serves no resource.k8s.io/v1 to read them from)"
	case len(claims.Problems) > 0:
		return "its resourceClaims (" + strings.Join(claims.Problems, "; ") + ")"
	}
	for name := range resourceNames(spec) {
		if strings.HasPrefix(string(name), ResourceDeviceClassPrefix) && !slices.Contains(WholeGPUResources, name) && name != ResourceDRAMIG {
			return fmt.Sprintf("its %s request", name)
		}
	}
	if others := OtherDRAGPUResources(spec, cluster); len(others) > 0 {
		return fmt.Sprintf("its %s request (a DeviceClass serves it with NVIDIA GPUs through DRA)", joinNames(others))
	}
	return ""
}

// OtherDRAGPUResources are the extended resources a pod spec requests, other
// than those policy counts (nvidia.com/gpu, nvidia.com/gpu.shared, MIG
// slices, the DeviceClasses' own), that a DeviceClass names its
// extendedResourceName and serves with NVIDIA GPUs the cluster publishes:
// the scheduler gives them through DRA, and policy counts none of them.
// Sorted.
func OtherDRAGPUResources(spec *corev1.PodSpec, cluster Cluster) []corev1.ResourceName {
	var out []corev1.ResourceName
	for name := range resourceNames(spec) {
		s := string(name)
		counted := name == ResourceGPU || name == ResourceGPUShared || strings.HasPrefix(s, ResourceMIGPrefix) || strings.HasPrefix(s, ResourceDeviceClassPrefix)
		if ReadsResource(s) && !counted && !slices.Contains(out, name) && len(cluster.DRAProducts(name, "")) > 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// NotCharged is the denial of a new pod whose devices budgets could not
// charge (Unchargeable), in a namespace budgets select.
func NotCharged(budgets []string, what string) string {
	return fmt.Sprintf("GPU power budget %s selects the namespace, and the GPUs the pod may get through %s cannot be charged to budgets: "+
		"ask for GPUs as %s: N (charged like %s) or through claims whose GPUs can be counted, or create the pod in a namespace no budget selects",
		strings.Join(budgets, ", "), what, ResourceDRAGPU, ResourceGPU)
}

// Charge is what one live pod, or a named claim it uses, adds to a
// budget's committed watts.
type Charge struct {
	// UID is the pod's, or the claim's ClaimKey.
	UID   types.UID
	Watts int64
	GPUs  int64
	// Shared marks a claim's charge: the most any pod using it costs
	// counts, once, and it is no pod. Pod is the pod it comes from.
	Shared bool
	Pod    types.UID
}

// Reservation is an admission not yet seen as a pod.
type Reservation struct {
	UID     types.UID
	Watts   int64
	Expires time.Time
}

// Committed is the recomputed state of a budget.
type Committed struct {
	Watts, Pods, GPUs int64
	// Kept are the reservations that still count.
	Kept []types.UID
}

// CountCommitted derives committed watts from the live pods charged to a
// budget (and the named claims they use) and its reservations. A pod's
// reservation counts until its pod is seen carrying at least the reserved
// cost, or until it expires; while both exist the larger counts, so an
// admitted raise is charged before the cache shows it and nothing is
// counted twice. A claim's reservation (ClaimReservationKey) counts until
// the pod that made it is seen charging the claim that much, or it expires:
// the claim then counts the
// most of its live charge and its pending reservations, so a pod that
// shares a claim keeps it charged even if every pod the cache shows on it
// goes first.
func CountCommitted(charges []Charge, reservations []Reservation, now time.Time) Committed {
	var c Committed
	live := make([]Charge, 0, len(charges))
	byUID := make(map[types.UID]int, len(charges))
	type podClaim struct{ claim, pod types.UID }
	byPod := map[podClaim]int64{} // what each pod charges a claim
	for _, p := range charges {
		if p.Shared {
			byPod[podClaim{p.UID, p.Pod}] = max(byPod[podClaim{p.UID, p.Pod}], p.Watts)
		}
		if i, seen := byUID[p.UID]; seen && p.Shared {
			live[i].Watts, live[i].GPUs = max(live[i].Watts, p.Watts), max(live[i].GPUs, p.GPUs)
			continue
		}
		byUID[p.UID] = len(live)
		live = append(live, p)
		if !p.Shared {
			c.Pods++
		}
	}
	for _, p := range live {
		c.GPUs = SatAdd(c.GPUs, p.GPUs)
	}
	liveWatts := func(key types.UID) int64 {
		if i, seen := byUID[key]; seen {
			return live[i].Watts
		}
		return 0
	}
	extra := make(map[types.UID]int64)
	for _, r := range reservations {
		key, pending := r.UID, true
		if claim, pod, isClaim := ClaimReservationOf(r.UID); isClaim {
			// Once seen at the reserved cost, the pod charges the claim itself.
			key, pending = claim, byPod[podClaim{claim, pod}] < r.Watts
		} else if i, seen := byUID[r.UID]; seen && live[i].Watts >= r.Watts {
			pending = false // the pod itself now carries the cost
		}
		if !pending || !now.Before(r.Expires) {
			continue // or it never appeared (or was never raised) in time
		}
		extra[key] = max(extra[key], SatSub(r.Watts, liveWatts(key)))
		c.Kept = append(c.Kept, r.UID)
	}
	for _, p := range live {
		c.Watts = SatAdd(c.Watts, p.Watts)
	}
	for _, w := range extra {
		c.Watts = SatAdd(c.Watts, w)
	}
	slices.Sort(c.Kept)
	return c
}

// ReservationAsk is one pod's request to a budget's ledger.
type ReservationAsk struct {
	// Release undoes the reservation this admission made, because another
	// budget denied the pod.
	Release bool
	// Watts is the pod's whole cost, as its reservation records it.
	Watts int64
	// Delta is what committed watts grow by: the cost, or a raise.
	Delta int64
}

// HeldReservation is the reservation a budget already holds for the pod.
type HeldReservation struct {
	Watts   int64
	Expires time.Time
}

// ReservationDecision is what the ledger does with one ask.
type ReservationDecision int

const (
	// ReservationUndo puts the pod's reservation back to what it was before
	// this admission and takes the delta off committed watts.
	ReservationUndo ReservationDecision = iota + 1
	// ReservationNothingToUndo means the reservation to release is gone, or a
	// newer one of the same pod replaced it (which stays, counted in full).
	ReservationNothingToUndo
	// ReservationAlreadyCharged means the pod's unexpired reservation holds at
	// least the cost (a forwarded ask whose answer was lost and that came again, or a
	// raise back to what the reservation still holds). It is admitted and
	// renewed, so the pod about to be stored is not released before the
	// cache shows it.
	ReservationAlreadyCharged
	// ReservationCharge means the delta fits: the reservation is written and committed grows.
	ReservationCharge
	// ReservationDeny means the delta does not fit a budget read fresh from the API server.
	ReservationDeny
	// ReservationReadFresh means the delta does not fit, but the budget was not read fresh
	// (it may predate a release by the reconciler): decide again on what
	// the API server holds before denying.
	ReservationReadFresh
)

// DecideReservation decides one ask against the budget as its batch has it
// so far. held is the pod's reservation in the budget (nil: none); fresh
// reports whether the budget was read from the API server for this batch.
func DecideReservation(ask ReservationAsk, held *HeldReservation, budget BudgetState, fresh bool, now time.Time) ReservationDecision {
	switch {
	case ask.Release && held != nil && held.Watts == ask.Watts:
		return ReservationUndo
	case ask.Release:
		return ReservationNothingToUndo
	case held != nil && held.Watts >= ask.Watts && now.Before(held.Expires):
		return ReservationAlreadyCharged
	case ask.Delta <= 0 || budget.Fits(ask.Delta):
		// Nothing more (a pod on a claim others already charge) fits even
		// a budget over its total.
		return ReservationCharge
	case fresh:
		return ReservationDeny
	}
	return ReservationReadFresh
}
