package policy

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ClaimRequest is one device request of a pod's ResourceClaims, as the
// webhook read it (pkg/webhook: the claim's or its template's spec) and
// matched it against the devices DRA publishes (pkg/draindex).
type ClaimRequest struct {
	// Source names it for messages: `claim "gpus" (ResourceClaimTemplate
	// "two-gpus"), request "gpu"`.
	Source string
	// Claim is the pod's claim it is a request of (spec.resourceClaims[].name).
	Claim string
	// Missing, when set, says why the request could not be read: its
	// template or claim does not exist (yet).
	Missing string
	// Class is its DeviceClass.
	Class string
	// All is allocationMode All (every matching device on the node it gets);
	// otherwise it asks for Count devices (ExactCount).
	All   bool
	Count int64
	// AdminAccess requests get access to devices others hold (monitoring):
	// they are not the pod's GPUs to cap or charge.
	AdminAccess bool
	// Devices counts the published devices it can get, by node and
	// product (catalog keys, a MIG device's marked "-MIG-"); OtherDevices is
	// set when it can get devices that are no NVIDIA GPU.
	Devices      map[string]map[string]int
	OtherDevices bool
	// Alternatives are a firstAvailable request's subrequests, in order:
	// the scheduler gives it one of them.
	Alternatives []ClaimRequest
}

// ClaimsDemand is what a pod's ResourceClaims ask of NVIDIA GPUs.
type ClaimsDemand struct {
	// Resolved is set when the webhook read the pod's claims; a pod with
	// claims and no resolution is refused a limit, as DRA is not served.
	Resolved bool
	// GPUs is the most whole GPUs the claims can get (saturating).
	GPUs int64
	// PerClaim is GPUs by the pod's claim (spec.resourceClaims[].name),
	// for the claims that can get any: what budgets charge (ClaimGPUs).
	PerClaim map[string]int64
	// Products are the candidate products of those GPUs, sorted, distinct;
	// From names the requests they come from, for messages.
	Products []string
	From     string
	// MIG names the requests that can get MIG devices, and Problems says why
	// a request's GPUs cannot be counted: a limit is refused for either.
	MIG      []string
	Problems []string
	// AdminAccess names the requests with admin access: a limit on the pod
	// would reach GPUs other pods hold, so it is refused.
	AdminAccess []string
}

// ClaimsDemandOf applies the rules of docs/webhook.md ("GPUs from
// ResourceClaims") to a pod's claim requests:
//   - a request is for GPUs when a device it can get is one of NVIDIA's
//     GPU products, or its class is NVIDIA's gpu.nvidia.com;
//   - ExactCount counts Count devices; All counts the most devices that
//     match it on one node (none published: the count is unbounded, a
//     problem); firstAvailable counts its largest alternative, and its
//     products are every alternative's;
//   - admin-access requests and requests for other devices count nothing;
//   - a template or claim that cannot be read is a problem.
func ClaimsDemandOf(reqs []ClaimRequest) ClaimsDemand {
	d := ClaimsDemand{Resolved: true}
	var from []string
	for _, r := range reqs {
		gpus, products, isGPU := d.add(r)
		if isGPU {
			d.GPUs = SatAdd(d.GPUs, gpus)
			if gpus > 0 {
				if d.PerClaim == nil {
					d.PerClaim = map[string]int64{}
				}
				d.PerClaim[r.Claim] = SatAdd(d.PerClaim[r.Claim], gpus)
			}
			d.Products = append(d.Products, products...)
			from = append(from, r.Source)
		}
	}
	slices.Sort(d.Products)
	d.Products = slices.Compact(d.Products)
	d.From = strings.Join(from, ", ")
	return d
}

// add judges one request: the GPUs it can get, their products, and whether
// it asks for GPUs at all; MIG devices and problems are recorded on d.
func (d *ClaimsDemand) add(r ClaimRequest) (int64, []string, bool) {
	switch {
	case r.Missing != "":
		d.Problems = append(d.Problems, fmt.Sprintf("%s: %s", r.Source, r.Missing))
		return 0, nil, false
	case r.AdminAccess:
		d.AdminAccess = append(d.AdminAccess, r.Source)
		return 0, nil, false
	case len(r.Alternatives) > 0:
		var most int64
		var products []string
		isGPU := false
		for _, alt := range r.Alternatives {
			n, p, g := d.add(alt)
			if g {
				most, products, isGPU = max(most, n), append(products, p...), true
			}
		}
		return most, products, isGPU
	}
	var products []string
	mig := false
	for _, byProduct := range r.Devices {
		for p := range byProduct {
			products = append(products, p)
			mig = mig || strings.Contains(p, "-MIG-")
		}
	}
	switch {
	case len(products) == 0 && r.OtherDevices:
		return 0, nil, false // other drivers' devices only
	case r.Class == DeviceClassMIG:
		// NVIDIA's classes say what they give, published or not.
		d.MIG = append(d.MIG, r.Source)
		return 0, nil, false
	case r.Class == DeviceClassVFIO:
		d.Problems = append(d.Problems, fmt.Sprintf("%s: DeviceClass %s gives GPUs bound to vfio-pci for a virtual machine, which the node's NVML does not drive", r.Source, r.Class))
		return 0, nil, false
	case len(products) == 0 && r.Class != DeviceClassGPU:
		// A class that matches no published device could later give GPUs,
		// MIG devices among them: what it gets cannot be judged.
		d.Problems = append(d.Problems, fmt.Sprintf("%s: DeviceClass %q matches no published device, so what it gets cannot be judged", r.Source, r.Class))
		return 0, nil, false
	}
	if mig {
		d.MIG = append(d.MIG, r.Source)
	}
	if !r.All {
		return max(r.Count, 1), products, true
	}
	// Devices of slices that name no node ("") are within reach of every
	// node: All gets them beside the node's own.
	count := func(byProduct map[string]int) int64 {
		var n int64
		for _, c := range byProduct {
			n = SatAdd(n, int64(c))
		}
		return n
	}
	anyNode := count(r.Devices[""])
	most := anyNode
	for node, byProduct := range r.Devices {
		if node != "" {
			most = max(most, SatAdd(count(byProduct), anyNode))
		}
	}
	if most == 0 {
		d.Problems = append(d.Problems, fmt.Sprintf("%s: allocationMode All and no ResourceSlice publishes a device it matches: how many GPUs it gets is unbounded", r.Source))
	}
	return most, products, true
}

// candidates adds the claims' products to the pod's other candidates;
// onlyClaims is set when the pod's GPUs all come from claims, so that the
// products of the nodes it could land on do not count.
func (d ClaimsDemand) candidates(c Candidates, onlyClaims bool) Candidates {
	if d.GPUs == 0 {
		return c
	}
	from := "the devices " + d.From + " can get"
	if onlyClaims {
		return Candidates{Labels: d.Products, From: from, OnlyDRA: true}
	}
	merged := Candidates{Labels: append(slices.Clone(c.Labels), d.Products...), From: c.From + " and " + from, OnlyDRA: c.OnlyDRA}
	slices.Sort(merged.Labels)
	merged.Labels = slices.Compact(merged.Labels)
	return merged
}

// ClaimGPUs is what a pod's AnnotationClaimGPUs says its claims' GPUs are.
type ClaimGPUs struct {
	// Own are the GPUs of the claims made for the pod alone, from its
	// templates.
	Own int64
	// Shared are the GPUs of the named ResourceClaims it uses, sorted by
	// claim: any number of pods may use one, and budgets charge it once.
	Shared []SharedClaim
}

// SharedClaim is a named ResourceClaim's GPUs.
type SharedClaim struct {
	Claim string
	GPUs  int64
}

// FormatClaimGPUs is the AnnotationClaimGPUs value of the claims' GPUs
// (ClaimsDemand.PerClaim): name=count for each claim that gets any, sorted
// by name; "" when none does.
func FormatClaimGPUs(perClaim map[string]int64) string {
	names := slices.Sorted(maps.Keys(perClaim))
	parts := make([]string, 0, len(names))
	for _, name := range names {
		if n := perClaim[name]; n > 0 {
			parts = append(parts, name+"="+strconv.FormatInt(n, 10))
		}
	}
	return strings.Join(parts, ",")
}

// ParseClaimGPUs reads an AnnotationClaimGPUs value against the pod's
// resourceClaims: ok is false unless it is exactly what FormatClaimGPUs
// writes (sorted names, each a claim of the pod, once, with a positive
// count in canonical form).
func ParseClaimGPUs(value string, claims []corev1.PodResourceClaim) (ClaimGPUs, bool) {
	perClaim, ok := parseClaimCounts(value, claims)
	if !ok {
		return ClaimGPUs{}, false
	}
	var out ClaimGPUs
	shared := map[string]int64{}
	for _, c := range claims {
		n := perClaim[c.Name]
		switch {
		case n == 0:
		case c.ResourceClaimName != nil:
			// One claim in two of the pod's entries is one set of GPUs.
			shared[*c.ResourceClaimName] = max(shared[*c.ResourceClaimName], n)
		default:
			out.Own = SatAdd(out.Own, n)
		}
	}
	for _, claim := range slices.Sorted(maps.Keys(shared)) {
		out.Shared = append(out.Shared, SharedClaim{Claim: claim, GPUs: shared[claim]})
	}
	return out, true
}

// parseClaimCounts is an AnnotationClaimGPUs value by the pod's claim.
func parseClaimCounts(value string, claims []corev1.PodResourceClaim) (map[string]int64, bool) {
	if value == "" {
		return nil, false
	}
	out := map[string]int64{}
	prev := ""
	for i, part := range strings.Split(value, ",") {
		name, count, found := strings.Cut(part, "=")
		n, err := strconv.ParseInt(count, 10, 64)
		if !found || err != nil || n <= 0 || strconv.FormatInt(n, 10) != count || (i > 0 && name <= prev) ||
			!slices.ContainsFunc(claims, func(c corev1.PodResourceClaim) bool { return c.Name == name }) {
			return nil, false
		}
		prev, out[name] = name, n
	}
	return out, true
}

// ClaimGPUsOf is what a pod's AnnotationClaimGPUs counts for one of its
// claims (spec.resourceClaims[].name): 0 when it counts none, or the value
// is malformed.
func ClaimGPUsOf(pod *corev1.Pod, claim string) int64 {
	perClaim, _ := parseClaimCounts(pod.Annotations[AnnotationClaimGPUs], pod.Spec.ResourceClaims)
	return perClaim[claim]
}

// ClaimUser is a live pod that uses a ResourceClaim, as its admission
// judged it.
type ClaimUser struct {
	// Pod names it for messages: "llm/decode-0".
	Pod string
	// GPUs are what its admission counted, and budgets charge, for the claim.
	GPUs int64
	// Limited is set when it has a limit the webhook admitted.
	Limited bool
}

// ClaimReplacement says why a ResourceClaim being created may not be the one
// its pods use, "" when it may. A pod admitted against another claim of the
// same name (a named claim deleted and made again while the pod waited, a
// template replaced before the controller copied it) must not get more GPUs
// than its admission counted (its budgets charge no more), nor, with a
// limit, devices a limit may not reach. claim names the new claim for
// messages, d is what it asks (ClaimsDemandOf), and budgeted reports whether
// a budget charges the namespace's pods: a pod without a limit or counted
// GPUs elsewhere is held to nothing.
func ClaimReplacement(claim string, d ClaimsDemand, users []ClaimUser, budgeted bool) string {
	var why []string
	for _, u := range users {
		if !u.Limited && u.GPUs == 0 && !budgeted {
			continue
		}
		switch {
		case len(d.Problems) > 0:
			why = append(why, fmt.Sprintf("pod %s was admitted for %d GPUs of it, and this claim gets GPUs that cannot be counted (%s)", u.Pod, u.GPUs, strings.Join(d.Problems, "; ")))
		case u.Limited && len(d.MIG)+len(d.AdminAccess) > 0:
			why = append(why, fmt.Sprintf("pod %s has a power limit admitted for whole GPUs, and this claim %s", u.Pod, claimTrouble(d)))
		case d.GPUs > u.GPUs:
			why = append(why, fmt.Sprintf("pod %s was admitted for %d GPUs of it, and this claim can get %s", u.Pod, u.GPUs, countString(d.GPUs)))
		}
	}
	if len(why) == 0 {
		return ""
	}
	return fmt.Sprintf("%s is not the claim its pods were admitted against: %s; create the pods again with the claim as it is now",
		claim, strings.Join(why, "; "))
}

// claimTrouble says why a limit may not reach what a claim gets.
func claimTrouble(d ClaimsDemand) string {
	if len(d.MIG) > 0 {
		return "can get MIG devices (" + strings.Join(d.MIG, ", ") + ")"
	}
	return "asks for admin access to devices other pods hold (" + strings.Join(d.AdminAccess, ", ") + ")"
}
