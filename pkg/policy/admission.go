package policy

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// UnknownProducts says what admission does when no candidate GPU product of a
// pod is in the catalog.
type UnknownProducts string

const (
	// UnknownProductsDeny denies the pod: its limit can't be checked.
	UnknownProductsDeny UnknownProducts = "deny"
	// UnknownProductsWarn admits the pod with a Warning; the agent still clamps
	// the limit to what NVML reports on the node.
	UnknownProductsWarn UnknownProducts = "warn"
)

// TimeSlicedGPUs says what admission does with a limit on a time-sliced GPU,
// whose one board every replica's pod shares.
type TimeSlicedGPUs string

const (
	// TimeSlicedGPUsDeny denies the limit: it would cap other tenants' pods.
	TimeSlicedGPUsDeny TimeSlicedGPUs = "deny"
	// TimeSlicedGPUsLowestWins admits it with a Warning: the agent caps the
	// board at the lowest limit among the pods sharing it.
	TimeSlicedGPUsLowestWins TimeSlicedGPUs = "lowest-wins"
)

// Admission decides on pods at admission time.
type Admission struct {
	Catalog         Catalog
	UnknownProducts UnknownProducts
	// Defaults are tried in order for GPU pods created without a limit.
	Defaults []DefaultRule
	// MaxGPUsPerPod bounds the GPUs a new pod may request; 0 means
	// DefaultMaxGPUsPerPod.
	MaxGPUsPerPod int64
	// TimeSlicedGPUs is what a limit on a time-sliced GPU gets ("" = deny).
	TimeSlicedGPUs TimeSlicedGPUs
	// StampKey signs every stamp set; nil: stamps are not signed.
	StampKey StampKey
	// Now is the clock a creation's signature is made with (nil: time.Now).
	Now func() time.Time
}

// Verdict is the decision on one pod.
type Verdict struct {
	// Errors deny the pod when not empty.
	Errors field.ErrorList
	// Warnings are returned to the client with an admitted pod.
	Warnings []string
	// Limit, Stamp and Signature are the annotation values the admitted pod
	// must carry; "" means the annotation must be absent.
	Limit, Stamp, Signature string
	// ClaimGPUs and ClaimSignature are the AnnotationClaimGPUs and
	// AnnotationClaimGPUsSignature values the admitted pod must carry.
	ClaimGPUs, ClaimSignature string
}

// Mutate decides what the mutating webhook does: default the limit of a new
// GPU pod (budgetDefaults first, then a.Defaults), check a new or changed
// limit, and set the stamp to the admitted limit, removing one the user wrote.
// An update that leaves the limit as it was keeps the stamp the pod had.
// claims is what the pod's ResourceClaims ask of GPUs (ClaimsDemandOf; zero:
// none read).
func (a *Admission) Mutate(op admissionv1.Operation, pod, old *corev1.Pod, cluster Cluster, budgetDefaults []DefaultRule, claims ClaimsDemand) Verdict {
	v := a.mutateLimit(op, pod, old, cluster, budgetDefaults, claims)
	v.ClaimGPUs, v.ClaimSignature = a.claimAnnotations(op, pod, old, claims)
	return v
}

// claimAnnotations are the AnnotationClaimGPUs and its signature a pod must
// carry: at creation, the GPUs its claims can get when they can all be
// counted (budgets refuse the pod otherwise); later, what it was created
// with, as its claims cannot change.
func (a *Admission) claimAnnotations(op admissionv1.Operation, pod, old *corev1.Pod, claims ClaimsDemand) (counts, sig string) {
	if op != admissionv1.Create {
		return old.Annotations[AnnotationClaimGPUs], old.Annotations[AnnotationClaimGPUsSignature]
	}
	if !claims.Resolved || len(claims.Problems) > 0 {
		return "", ""
	}
	if counts = FormatClaimGPUs(claims.PerClaim); counts != "" && a.StampKey != nil {
		sig = a.StampKey.SignClaims(pod.Namespace, counts, a.now())
	}
	return counts, sig
}

func (a *Admission) mutateLimit(op admissionv1.Operation, pod, old *corev1.Pod, cluster Cluster, budgetDefaults []DefaultRule, claims ClaimsDemand) Verdict {
	limit, hasLimit := pod.Annotations[AnnotationPowerLimit]
	demand := demandWith(&pod.Spec, claims)
	if err := a.checkGPUCount(op, demand); err != nil {
		return Verdict{Errors: field.ErrorList{err}}
	}
	if limitUnchanged(op, pod, old) {
		return Verdict{Limit: limit, Stamp: old.Annotations[AnnotationPowerLimitValidated], Signature: old.Annotations[AnnotationPowerLimitSignature]}
	}
	var rule *DefaultRule
	if !hasLimit && op == admissionv1.Create {
		r, ok := FirstDefault(budgetDefaults, pod.Labels)
		if !ok {
			r, ok = FirstDefault(a.Defaults, pod.Labels)
		}
		if ok && demand.GPUs > 0 {
			limit, hasLimit, rule = r.Watts.String(), true, &r
		}
	}
	if !hasLimit {
		return Verdict{}
	}
	if op == admissionv1.Update && demand.Claims {
		return Verdict{Errors: field.ErrorList{claimsLimitAtCreation(limit)}}
	}
	v := a.check(pod, demand, limit, rule, cluster)
	v.Limit, v.Stamp = limit, stampFor(demand, limit)
	if a.StampKey != nil && v.Stamp != "" {
		if op == admissionv1.Create {
			v.Signature = a.StampKey.SignCreate(pod.Namespace, v.Stamp, a.now())
		} else {
			v.Signature = a.StampKey.SignUpdate(pod.Namespace, pod.UID, v.Stamp)
		}
	}
	return v
}

func (a *Admission) now() time.Time {
	if a.Now == nil {
		return time.Now()
	}
	return a.Now()
}

// stampFor is the stamp a pod with an admitted limit carries: the limit, or
// none on a pod that requests no GPU. Such a limit was checked against no
// GPU, so nothing may enforce it if the pod reaches one some other way.
func stampFor(demand GPUDemand, limit string) string {
	if demand.GPUs == 0 {
		return ""
	}
	return limit
}

// Validate re-checks the final object, whatever mutating webhooks did to it:
// the stamp must match what Mutate would have admitted, and a new or changed
// limit must pass every check again. It returns no Warnings: Mutate did.
func (a *Admission) Validate(op admissionv1.Operation, pod, old *corev1.Pod, cluster Cluster, claims ClaimsDemand) Verdict {
	limit, hasLimit := pod.Annotations[AnnotationPowerLimit]
	stamp, hasStamp := pod.Annotations[AnnotationPowerLimitValidated]
	var v Verdict
	demand := demandWith(&pod.Spec, claims)
	if err := a.checkGPUCount(op, demand); err != nil {
		v.Errors = append(v.Errors, err)
	}
	switch {
	case limitUnchanged(op, pod, old):
		if want, had := old.Annotations[AnnotationPowerLimitValidated]; stamp != want || hasStamp != had {
			v.Errors = append(v.Errors, invalidValue(StampPath, stamp,
				fmt.Sprintf("must stay %q while %s is unchanged; only the power webhook sets it", want, AnnotationPowerLimit)))
		}
		if sig, want := pod.Annotations[AnnotationPowerLimitSignature], old.Annotations[AnnotationPowerLimitSignature]; sig != want {
			v.Errors = append(v.Errors, invalidValue(SignaturePath, sig,
				fmt.Sprintf("must stay as it was while %s is unchanged; only the power webhook sets it", AnnotationPowerLimit)))
		}
	case !hasLimit:
		if hasStamp {
			v.Errors = append(v.Errors, invalidValue(StampPath, stamp,
				fmt.Sprintf("must be absent when %s is absent; only the power webhook sets it", AnnotationPowerLimit)))
		}
		v.Errors = append(v.Errors, a.checkSignature(pod, "")...)
	case op == admissionv1.Update && demand.Claims:
		v.Errors = append(v.Errors, claimsLimitAtCreation(limit))
	default:
		v.Errors = append(v.Errors, a.check(pod, demand, limit, nil, cluster).Errors...)
		switch want := stampFor(demand, limit); {
		case len(v.Errors) > 0:
		case want == "" && hasStamp:
			v.Errors = append(v.Errors, invalidValue(StampPath, stamp,
				fmt.Sprintf("must be absent on a pod that requests no %s: its limit was checked against no GPU; only the power webhook sets it", ResourceGPU)))
		case want != "" && stamp != want:
			v.Errors = append(v.Errors, invalidValue(StampPath, stamp,
				fmt.Sprintf("must equal the admitted %s %q; only the power webhook sets it (was the pod changed by another mutating webhook?)", AnnotationPowerLimit, limit)))
		default:
			v.Errors = append(v.Errors, a.checkSignature(pod, want)...)
		}
	}
	v.Errors = append(v.Errors, a.checkClaimAnnotations(op, pod, old, claims)...)
	v.Limit, v.Stamp = limit, stamp
	return v
}

// checkClaimAnnotations holds the pod's AnnotationClaimGPUs and its
// signature to what Mutate sets: at creation the counts of its claims, and
// after it what the pod was created with.
func (a *Admission) checkClaimAnnotations(op admissionv1.Operation, pod, old *corev1.Pod, claims ClaimsDemand) field.ErrorList {
	counts, hasCounts := pod.Annotations[AnnotationClaimGPUs]
	sig, hasSig := pod.Annotations[AnnotationClaimGPUsSignature]
	if op != admissionv1.Create {
		var errs field.ErrorList
		if was, had := old.Annotations[AnnotationClaimGPUs]; counts != was || hasCounts != had {
			errs = append(errs, invalidValue(ClaimGPUsPath, counts, fmt.Sprintf("must stay %q, as the pod was created: its claims cannot change; only the power webhook sets it", was)))
		}
		if was, had := old.Annotations[AnnotationClaimGPUsSignature]; sig != was || hasSig != had {
			errs = append(errs, invalidValue(ClaimGPUsSignaturePath, sig, "must stay as the pod was created; only the power webhook sets it"))
		}
		return errs
	}
	want, _ := a.claimAnnotations(op, pod, old, claims)
	switch {
	case counts != want || hasCounts != (want != ""):
		return field.ErrorList{invalidValue(ClaimGPUsPath, counts, fmt.Sprintf("must be %q, the GPUs the pod's resourceClaims can get (absent: none, or not countable); only the power webhook sets it", want))}
	case (a.StampKey == nil || want == "") && hasSig:
		return field.ErrorList{invalidValue(ClaimGPUsSignaturePath, sig, "must be absent here; only the power webhook sets it")}
	case a.StampKey != nil && want != "" && !a.StampKey.verifyCreated("claims", pod.Namespace, counts, a.now(), sig):
		return field.ErrorList{invalidValue(ClaimGPUsSignaturePath, sig, "is not the power webhook's signature of the claims' GPU counts; only the power webhook sets it")}
	}
	return nil
}

// checkSignature checks the signature annotation against the stamp the pod
// must carry ("" none): one Mutate could have set, for this pod now.
func (a *Admission) checkSignature(pod *corev1.Pod, stamp string) field.ErrorList {
	sig, has := pod.Annotations[AnnotationPowerLimitSignature]
	switch {
	case (a.StampKey == nil || stamp == "") && has:
		return field.ErrorList{invalidValue(SignaturePath, sig, "must be absent here; only the power webhook sets it")}
	case a.StampKey != nil && stamp != "" && !a.StampKey.Verify(pod.Namespace, pod.UID, a.now(), stamp, sig):
		return field.ErrorList{invalidValue(SignaturePath, sig, "is not the power webhook's signature of the stamp; only the power webhook sets it")}
	}
	return nil
}

// checkGPUCount denies a new pod that requests more GPUs than any node can
// hold: it could never run, and its cost would dwarf every budget. Only at
// creation: container resources cannot change afterwards, and an update of a
// pod admitted before the bound (removing a finalizer) must not get stuck.
func (a *Admission) checkGPUCount(op admissionv1.Operation, demand GPUDemand) *field.Error {
	bound := a.MaxGPUsPerPod
	if bound <= 0 {
		bound = DefaultMaxGPUsPerPod
	}
	if op != admissionv1.Create {
		return nil
	}
	n := demand.GPUs
	if n <= bound {
		return nil
	}
	detail := fmt.Sprintf("the pod requests %s GPUs, more than the %d a pod may request (no node holds that many); request at most %d",
		countString(n), bound, bound)
	return field.Forbidden(field.NewPath("spec").Child("containers").Key("*").Child("resources", "requests").Key(ResourceGPU), detail)
}

// countString renders a saturated count as what it is: too large to say.
func countString(n int64) string {
	if n == math.MaxInt64 {
		return "more than 9223372036854775806"
	}
	return strconv.FormatInt(n, 10)
}

// limitUnchanged reports an update that keeps the limit the pod already had:
// such a pod was admitted before and is not checked again (bounds or the
// catalog may have changed since, and a running pod can't be moved).
func limitUnchanged(op admissionv1.Operation, pod, old *corev1.Pod) bool {
	if op != admissionv1.Update {
		return false
	}
	limit, has := pod.Annotations[AnnotationPowerLimit]
	oldLimit, had := old.Annotations[AnnotationPowerLimit]
	return has && had && limit == oldLimit
}

// claimsLimitAtCreation refuses a limit added or changed on a pod with
// resourceClaims: the claims' devices are judged from their specs at the
// pod's creation, and a template may have been replaced since the
// controller copied it into the pod's claim.
func claimsLimitAtCreation(limit string) *field.Error {
	return invalidValue(LimitPath, limit, "a pod with resourceClaims gets its power limit when it is created, not later: its claims' devices are checked then; "+
		"recreate the pod with the limit")
}

// check runs every rule on a limit: syntax, the pod's GPU shape, and the
// bounds of the GPU products it can land on. rule is the default rule the
// limit came from, if any, so a denial can name it.
func (a *Admission) check(pod *corev1.Pod, demand GPUDemand, limit string, rule *DefaultRule, cluster Cluster) Verdict {
	var v Verdict
	deny := func(detail string) Verdict {
		if rule != nil {
			detail = fmt.Sprintf("set by default rule %q: %s; set the annotation on the pod or fix the rule", rule.Origin, detail)
		}
		v.Errors = append(v.Errors, invalidValue(LimitPath, limit, detail))
		return v
	}
	w, err := ValidateLimitSyntax(LimitPath, limit)
	if err != nil {
		if rule != nil {
			return deny(err.Detail)
		}
		v.Errors = append(v.Errors, err)
		return v
	}

	others := OtherDRAGPUResources(&pod.Spec, cluster)
	switch {
	case len(demand.MIG) > 0:
		return deny(fmt.Sprintf("the pod requests MIG slices (%s), and a power limit applies to a whole board shared by every slice on it; "+
			"remove the annotation or request whole %s", joinNames(demand.MIG), ResourceGPU))
	case demand.Passthrough:
		return deny(fmt.Sprintf("the pod requests GPUs bound to vfio-pci for a virtual machine (%s): the guest's driver runs them, and the node's NVML cannot cap them; remove the annotation",
			ResourceDRAVFIO))
	case len(others) > 0:
		return deny(fmt.Sprintf("the pod requests %s, which a DeviceClass serves with NVIDIA GPUs through DRA (its extendedResourceName), and the power webhook counts GPUs only as %s, %s or resourceClaims; "+
			"ask for the GPUs in one of those forms, or remove the annotation", joinNames(others), ResourceGPU, ResourceDRAGPU))
	case demand.Claims && !demand.FromClaims.Resolved:
		return deny(fmt.Sprintf("the pod gets devices through resourceClaims, and this cluster serves no resource.k8s.io/v1 to read them from; "+
			"remove the annotation or request %s", ResourceGPU))
	case len(demand.FromClaims.AdminAccess) > 0:
		return deny(fmt.Sprintf("%s asks for admin access to devices other pods hold, and a limit would cap their GPUs too; remove the annotation",
			strings.Join(demand.FromClaims.AdminAccess, ", ")))
	case len(demand.FromClaims.MIG) > 0:
		return deny(fmt.Sprintf("%s can get MIG devices, and a power limit applies to a whole board shared by every slice on it; "+
			"remove the annotation or ask for whole GPUs (DeviceClass %s)", strings.Join(demand.FromClaims.MIG, ", "), DeviceClassGPU))
	case len(demand.FromClaims.Problems) > 0:
		return deny(fmt.Sprintf("the GPUs the pod's claims get cannot be counted: %s; fix the claims or remove the annotation",
			strings.Join(demand.FromClaims.Problems, "; ")))
	case demand.GPUs == 0:
		v.Warnings = append(v.Warnings, fmt.Sprintf("%s: %q has no effect: the pod requests no %s, so it is not stamped and no GPU is capped for it", AnnotationPowerLimit, limit, ResourceGPU))
		return v
	}

	cands := demand.FromClaims.candidates(CandidatesOf(pod, cluster), demand.GPUs == demand.FromClaims.GPUs)
	if detail := a.sharedBoard(demand, cands, &v); detail != "" {
		return deny(detail)
	}
	b := a.Catalog.BoundsOf(cands.Labels)
	if len(b.Known) == 0 {
		msg, advice := unknownProductsMessage(cands)
		if a.UnknownProducts == UnknownProductsWarn {
			v.Warnings = append(v.Warnings, fmt.Sprintf("%s: %q was not checked: %s", AnnotationPowerLimit, limit, msg))
			return v
		}
		return deny(msg + "; " + advice)
	}
	if len(b.Unknown) > 0 {
		v.Warnings = append(v.Warnings, fmt.Sprintf("%s: %q was not checked against %s (from %s): no power range is known for %s",
			AnnotationPowerLimit, limit, quoteAll(b.Unknown), cands.From, pluralIt(len(b.Unknown))))
	}
	switch {
	case b.Min > b.Max:
		return deny(fmt.Sprintf("no limit is valid on every GPU the pod can land on (%s): %s; pin the pod to one product with a nodeSelector on %s",
			cands.From, strings.Join(b.Ranges, ", "), LabelGPUProduct))
	case w < b.Min:
		return deny(fmt.Sprintf("below the %d W minimum of %s; set %d to %d W", b.Min, b.ofWhich(b.MinOf, "highest minimum"), b.Min, b.Max))
	case w > b.Max:
		return deny(fmt.Sprintf("above the %d W maximum of %s; set %d to %d W", b.Max, b.ofWhich(b.MaxOf, "lowest maximum"), b.Min, b.Max))
	}
	return v
}

// sharedBoard returns why a limit cannot be admitted on the boards the pod
// can land on, "" when it can. A power limit applies to a whole board: on a
// board split into MIG slices (the single strategy's "-MIG-" product label)
// or time-sliced between pods ("-SHARED", or the nvidia.com/gpu.shared
// resource) one tenant's limit would cap every other tenant on it. Time-
// sliced boards may be opened by the operator (lowest limit wins); MIG ones
// never, as for MIG slice resources.
func (a *Admission) sharedBoard(d GPUDemand, cands Candidates, v *Verdict) string {
	for _, label := range cands.Labels {
		if strings.Contains(label, "-MIG-") {
			return fmt.Sprintf("the pod can land on MIG slices (%s=%q, from %s), and a power limit applies to a whole board shared by every slice on it; "+
				"remove the annotation or pin the pod to whole GPUs with a nodeSelector on %s", LabelGPUProduct, label, cands.From, LabelGPUProduct)
		}
	}
	var why string
	if d.Shared {
		why = fmt.Sprintf("the pod requests %s", ResourceGPUShared)
	} else {
		for _, label := range cands.Labels {
			if strings.HasSuffix(label, "-SHARED") {
				why = fmt.Sprintf("the pod can land on time-sliced GPUs (%s=%q, from %s)", LabelGPUProduct, label, cands.From)
				break
			}
		}
	}
	if why == "" {
		return ""
	}
	if a.TimeSlicedGPUs == TimeSlicedGPUsLowestWins {
		v.Warnings = append(v.Warnings, fmt.Sprintf("%s: %s: every pod sharing the board is capped at the lowest limit among them", AnnotationPowerLimit, why))
		return ""
	}
	return why + ", and a power limit on a time-sliced board caps every pod that shares it; remove the annotation or pin the pod to GPUs that are not shared " +
		"(the cluster operator can allow it with the webhook's --time-sliced-gpus=lowest-wins)"
}

func unknownProductsMessage(c Candidates) (msg, advice string) {
	advice = "pin the pod to a known product with a nodeSelector on " + LabelGPUProduct + ", or ask the cluster operator to add the product to the power webhook's catalog"
	switch {
	case c.OnlyDRA && len(c.Labels) == 0:
		return fmt.Sprintf("%s: no ResourceSlice has such a device yet, so there is no GPU to check the limit against", c.From),
			"retry once the GPUs' DRA driver has published them (kubectl get resourceslices)"
	case c.OnlyDRA:
		return fmt.Sprintf("no power range is known for GPU product %s (the productName of %s)", quoteAll(c.Labels), c.From),
			"ask the cluster operator to add the product to the power webhook's catalog (its productName, spaces as dashes)"
	case len(c.Labels) == 0 && c.From == "the cluster's GPU nodes":
		return fmt.Sprintf("no node in the cluster has a %s label, so there is no GPU to check the limit against", LabelGPUProduct), advice
	case len(c.Labels) == 0 && strings.HasPrefix(c.From, "node "):
		return fmt.Sprintf("%s has no %s label, or does not exist", c.From, LabelGPUProduct), advice
	case len(c.Labels) == 0:
		return fmt.Sprintf("the %s allows no %s value", c.From, LabelGPUProduct), advice
	}
	return fmt.Sprintf("no power range is known for GPU product %s (%s from %s)", quoteAll(c.Labels), LabelGPUProduct, c.From), advice
}

func quoteAll(values []string) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

func joinNames(names []corev1.ResourceName) string {
	s := make([]string, len(names))
	for i, n := range names {
		s[i] = string(n)
	}
	return strings.Join(s, ", ")
}

func pluralIt(n int) string {
	if n == 1 {
		return "it"
	}
	return "them"
}
