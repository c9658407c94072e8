package webhook

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/pkg/draindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// ClaimResolver reads what a pod's ResourceClaims ask of GPUs at admission:
// each claim's spec (a template's, for the claim the controller makes from
// it once the pod exists; a named claim's own), matched against the devices
// DRA publishes. A spec is read when the pod is admitted: templates and
// claims are immutable, and the controller copies a template as it finds
// it.
type ClaimResolver struct {
	// API reads templates and claims from the API server, not a cache: a
	// template created moments before its pod must be found.
	API client.Reader
	DRA *draindex.Index
}

// maxPodClaims is the API's bound on a pod's resourceClaims.
const maxPodClaims = 32

// Demand is policy.ClaimsDemandOf of the pod's claim requests; a pod
// without claims asks nothing of them.
func (r *ClaimResolver) Demand(ctx context.Context, pod *corev1.Pod) (policy.ClaimsDemand, error) {
	if r == nil || len(pod.Spec.ResourceClaims) == 0 {
		return policy.ClaimsDemand{}, nil
	}
	if n := len(pod.Spec.ResourceClaims); n > maxPodClaims {
		// The API server refuses more; the mutating webhook sees the pod first.
		return policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "resourceClaims",
			Missing: fmt.Sprintf("%d claims, more than the %d a pod may have", n, maxPodClaims)}}), nil
	}
	var reqs []policy.ClaimRequest
	for _, pc := range pod.Spec.ResourceClaims {
		spec, source, missing, err := r.spec(ctx, pod.Namespace, pc)
		if err != nil {
			return policy.ClaimsDemand{}, err
		}
		if missing != "" {
			reqs = append(reqs, policy.ClaimRequest{Source: source, Claim: pc.Name, Missing: missing})
			continue
		}
		reqs = append(reqs, r.requests(source, pc.Name, spec)...)
	}
	return policy.ClaimsDemandOf(reqs), nil
}

// requests are a claim spec's device requests, each matched against the
// published devices; claim is the pod's name for the claim.
func (r *ClaimResolver) requests(source, claim string, spec *resourcev1.ResourceClaimSpec) []policy.ClaimRequest {
	var reqs []policy.ClaimRequest
	for _, dr := range spec.Devices.Requests {
		req := r.request(fmt.Sprintf("%s, request %q", source, dr.Name), dr)
		req.Claim = claim
		reqs = append(reqs, req)
	}
	return reqs
}

// spec reads a pod claim's ResourceClaimSpec: missing says why there is none
// to read.
func (r *ClaimResolver) spec(ctx context.Context, namespace string, pc corev1.PodResourceClaim) (spec *resourcev1.ResourceClaimSpec, source, missing string, err error) {
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: namespace, Name: name} }
	switch {
	case pc.ResourceClaimTemplateName != nil:
		source = fmt.Sprintf("claim %q (ResourceClaimTemplate %q)", pc.Name, *pc.ResourceClaimTemplateName)
		var t resourcev1.ResourceClaimTemplate
		err = r.API.Get(ctx, key(*pc.ResourceClaimTemplateName), &t)
		spec = &t.Spec.Spec
	case pc.ResourceClaimName != nil:
		source = fmt.Sprintf("claim %q (ResourceClaim %q)", pc.Name, *pc.ResourceClaimName)
		var c resourcev1.ResourceClaim
		err = r.API.Get(ctx, key(*pc.ResourceClaimName), &c)
		spec = &c.Spec
	default:
		return nil, fmt.Sprintf("claim %q", pc.Name), "it names neither a ResourceClaim nor a template", nil
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, source, fmt.Sprintf("not found in namespace %q: create it before the pod", namespace), nil
	case err != nil:
		return nil, source, "", fmt.Errorf("read %s: %w", source, err)
	}
	return spec, source, "", nil
}

// request is one device request with what the published devices give it.
func (r *ClaimResolver) request(source string, dr resourcev1.DeviceRequest) policy.ClaimRequest {
	if dr.Exactly != nil {
		e := dr.Exactly
		return r.matched(policy.ClaimRequest{Source: source, Class: e.DeviceClassName, All: e.AllocationMode == resourcev1.DeviceAllocationModeAll,
			Count: e.Count, AdminAccess: e.AdminAccess != nil && *e.AdminAccess}, e.Selectors)
	}
	out := policy.ClaimRequest{Source: source}
	for _, sub := range dr.FirstAvailable {
		out.Alternatives = append(out.Alternatives, r.matched(policy.ClaimRequest{Source: fmt.Sprintf("%s/%s", source, sub.Name), Class: sub.DeviceClassName,
			All: sub.AllocationMode == resourcev1.DeviceAllocationModeAll, Count: sub.Count}, sub.Selectors))
	}
	return out
}

func (r *ClaimResolver) matched(req policy.ClaimRequest, selectors []resourcev1.DeviceSelector) policy.ClaimRequest {
	if r.DRA != nil {
		var others int
		req.Devices, others = r.DRA.Match(req.Class, selectors)
		req.OtherDevices = others > 0
	}
	return req
}
