package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// ClaimValidatePath is where ResourceClaim creations are validated.
const ClaimValidatePath = "/validate-resourceclaims"

// podClaimAnnotation names, on a claim the resourceclaim controller makes
// from a pod's template, the pod's claim it is for.
const podClaimAnnotation = "resource.kubernetes.io/pod-claim-name"

// ClaimValidator is the validating webhook for ResourceClaim creations. A
// pod's claims are judged at its admission, but a claim is only bound to
// the pod when it is allocated: a named claim can be deleted and made again
// while its pod waits, and a template replaced before the controller copies
// it. A claim created for pods already admitted (its name in their specs,
// or made by the resourceclaim controller from a pod's template) must not
// give them more GPUs than their admission counted, nor, to a pod with a
// limit, devices a limit may not reach (policy.ClaimReplacement).
type ClaimValidator struct {
	// Claims judges the claim's spec; nil: DRA is not served.
	Claims *ClaimResolver
	// API reads the pods a claim is for from the API server: a pod created
	// a moment before its claim is swapped may not be in any cache yet.
	API client.Reader
	// Budgets says whether a budget charges the namespace; nil: none.
	Budgets *budget.Ledger
}

// claimMakers are the identities the control plane creates a pod's claims
// as: the resourceclaim controller's service account (or the controller
// manager's, without per-controller credentials) for a template's claims,
// and the scheduler for an extended-resource claim. The claims they make
// have generated names, which no pod can name beforehand.
var claimMakers = []string{"system:serviceaccount:kube-system:resource-claim-controller", "system:kube-controller-manager", "system:kube-scheduler"}

// extendedResourceClaimAnnotation marks the claim the scheduler makes for a
// pod's extended resources that DRA serves (and takes, owned by the pod,
// for that pod).
const extendedResourceClaimAnnotation = "resource.kubernetes.io/extended-resource-claim"

// podListPage bounds the pods read at once when a claim's users are looked for.
const podListPage = 500

// Handle implements admission.Handler.
func (v *ClaimValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || v.Claims == nil {
		return admission.Allowed("")
	}
	var claim resourcev1.ResourceClaim
	if err := json.Unmarshal(req.Object.Raw, &claim); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode ResourceClaim: %w", err))
	}
	namespace := req.Namespace
	var users []policy.ClaimUser
	var err error
	if slices.Contains(claimMakers, req.UserInfo.Username) {
		users, err = v.ownerUser(ctx, namespace, &claim)
	} else {
		users, err = v.podUsers(ctx, namespace, &claim)
	}
	var unknown errOwnerUnknown
	if errors.As(err, &unknown) {
		return admission.Denied(fmt.Sprintf("ResourceClaim %q names pod %q (uid %s) its controller, and no such pod exists in namespace %q: "+
			"a pod's claims are made by the resourceclaim controller, for pods that exist", claim.Name, unknown.owner.Name, unknown.owner.UID, namespace))
	}
	if err != nil || len(users) == 0 {
		return errorOrAllowed(err)
	}
	budgeted := false
	if v.Budgets != nil {
		budgets, err := v.Budgets.Selecting(ctx, namespace)
		if err != nil {
			return errorOrAllowed(err)
		}
		budgeted = len(budgets) > 0
	}
	source := fmt.Sprintf("ResourceClaim %q", claim.Name)
	d := policy.ClaimsDemandOf(v.Claims.requests(source, claim.Name, &claim.Spec))
	if why := policy.ClaimReplacement(source, d, users, budgeted); why != "" {
		return admission.Denied(why)
	}
	return admission.Allowed("")
}

// errOwnerUnknown is a claim's pod owner that no pod matches.
type errOwnerUnknown struct{ owner metav1.OwnerReference }

func (e errOwnerUnknown) Error() string {
	return "no pod " + e.owner.Name + " of uid " + string(e.owner.UID)
}

func errorOrAllowed(err error) admission.Response {
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.Allowed("")
}

// podUsers are the live pods of namespace a claim a user creates can be
// taken for, read from the API server (a pod admitted a moment ago must be
// found): a pod whose spec names it, one whose status records it as the
// claim made from its template, and the pod its controller owner's UID is,
// whatever the owner's kind (the scheduler and the controller take a claim
// for a pod by that UID alone).
func (v *ClaimValidator) podUsers(ctx context.Context, namespace string, claim *resourcev1.ResourceClaim) ([]policy.ClaimUser, error) {
	owner := metav1.GetControllerOf(claim)
	ownerSeen := false
	var users []policy.ClaimUser
	opts := []client.ListOption{client.InNamespace(namespace), client.Limit(podListPage)}
	for {
		var pods corev1.PodList
		if err := v.API.List(ctx, &pods, opts...); err != nil {
			return nil, fmt.Errorf("list pods in %s for ResourceClaim %s: %w", namespace, claim.Name, err)
		}
		for i := range pods.Items {
			pod := &pods.Items[i]
			owned := owner != nil && owner.UID == pod.UID
			if owned && isPodOwner(owner) && owner.Name != pod.Name {
				return nil, errOwnerUnknown{owner: *owner}
			}
			ownerSeen = ownerSeen || owned
			if u, ok := claimUser(pod, claim, owned); ok {
				users = append(users, u)
			}
		}
		if pods.Continue == "" {
			break
		}
		opts = []client.ListOption{client.InNamespace(namespace), client.Limit(podListPage), client.Continue(pods.Continue)}
	}
	if owner != nil && isPodOwner(owner) && !ownerSeen {
		return nil, errOwnerUnknown{owner: *owner}
	}
	return users, nil
}

func isPodOwner(o *metav1.OwnerReference) bool { return o.APIVersion == "v1" && o.Kind == "Pod" }

// claimUser is a live pod as a user of claim: through each of its claims
// that names it (resourceClaimName), that its status records it for, or,
// when the pod is the claim's controller owner (owned), as the scheduler's
// claim for its extended resources, or through the claim its
// podClaimAnnotation names, else through any of them; counted at the most
// of those.
func claimUser(pod *corev1.Pod, claim *resourcev1.ResourceClaim, owned bool) (policy.ClaimUser, bool) {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return policy.ClaimUser{}, false
	}
	u := policy.ClaimUser{Pod: pod.Namespace + "/" + pod.Name}
	found := false
	use := func(entry string) { found, u.GPUs = true, max(u.GPUs, policy.ClaimGPUsOf(pod, entry)) }
	for _, pc := range pod.Spec.ResourceClaims {
		if pc.ResourceClaimName != nil && *pc.ResourceClaimName == claim.Name {
			use(pc.Name)
		}
	}
	for _, st := range pod.Status.ResourceClaimStatuses {
		if st.ResourceClaimName != nil && *st.ResourceClaimName == claim.Name {
			use(st.Name)
		}
	}
	switch entry, named := claim.Annotations[podClaimAnnotation]; {
	case !owned:
	case claim.Annotations[extendedResourceClaimAnnotation] == "true":
		// The scheduler's claim for the pod's extended resources, whose
		// GPUs its admission counted.
		found, u.GPUs = true, max(u.GPUs, policy.DemandOf(&pod.Spec).GPUs)
	case named && slices.ContainsFunc(pod.Spec.ResourceClaims, func(pc corev1.PodResourceClaim) bool { return pc.Name == entry }):
		use(entry)
	default:
		found = true
		for _, pc := range pod.Spec.ResourceClaims {
			use(pc.Name) // it could be taken for any of them
		}
	}
	_, u.Limited = pod.Annotations[policy.AnnotationPowerLimitValidated]
	return u, found
}

// ownerUser is the pod a claim made by the control plane (claimMakers) is
// for: its controller owner, read by name (the claim's generated name is
// one no other pod can know), held to what claimUser holds it to.
func (v *ClaimValidator) ownerUser(ctx context.Context, namespace string, claim *resourcev1.ResourceClaim) ([]policy.ClaimUser, error) {
	owner := metav1.GetControllerOf(claim)
	if owner == nil || !isPodOwner(owner) {
		return nil, nil // a PodGroup's (docs/webhook.md), or no pod's
	}
	var pod corev1.Pod
	err := v.API.Get(ctx, types.NamespacedName{Namespace: namespace, Name: owner.Name}, &pod)
	switch {
	case err != nil && !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("get pod %s/%s, which ResourceClaim %s is made for: %w", namespace, owner.Name, claim.Name, err)
	case err != nil || pod.UID != owner.UID:
		// The controller and the scheduler take the claim by the owner's
		// UID alone: one that names no pod of that name and UID could be
		// any pod's.
		return nil, errOwnerUnknown{owner: *owner}
	}
	if u, ok := claimUser(&pod, claim, true); ok {
		return []policy.ClaimUser{u}, nil
	}
	return nil, nil
}
