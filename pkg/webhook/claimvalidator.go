package webhook

import (
	"context"
	"encoding/json"
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
	"github.com/dynamo-power/gpu-power/pkg/podindex"
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
// or made from a pod's template) must not give them more GPUs than their
// admission counted, nor, to a pod with a limit, devices a limit may not
// reach (policy.ClaimReplacement).
type ClaimValidator struct {
	// Claims judges the claim's spec; nil: DRA is not served.
	Claims *ClaimResolver
	// Pods are the live pods, with the named claims each uses.
	Pods *podindex.Index
	// API reads the pod a template's claim is made for: it has just been
	// created, and the index may not show it yet.
	API client.Reader
	// Budgets says whether a budget charges the namespace; nil: none.
	Budgets *budget.Ledger
}

// Handle implements admission.Handler.
func (v *ClaimValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create || v.Claims == nil {
		return admission.Allowed("")
	}
	var claim resourcev1.ResourceClaim
	if err := json.Unmarshal(req.Object.Raw, &claim); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode ResourceClaim: %w", err))
	}
	name, namespace := claim.Name, req.Namespace
	if name == "" {
		return admission.Allowed("") // generateName: no pod can name it yet, and a template's claim names its pod
	}
	users, err := v.users(ctx, namespace, &claim)
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
	source := fmt.Sprintf("ResourceClaim %q", name)
	d := policy.ClaimsDemandOf(v.Claims.requests(source, name, &claim.Spec))
	if why := policy.ClaimReplacement(source, d, users, budgeted); why != "" {
		return admission.Denied(why)
	}
	return admission.Allowed("")
}

func errorOrAllowed(err error) admission.Response {
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.Allowed("")
}

// users are the live pods the claim is for: those whose spec names it,
// and the pod whose template it is made from.
func (v *ClaimValidator) users(ctx context.Context, namespace string, claim *resourcev1.ResourceClaim) ([]policy.ClaimUser, error) {
	var users []policy.ClaimUser
	v.Pods.ClaimUsers(namespace, claim.Name, func(name string, p *podindex.GPUPod) {
		u := policy.ClaimUser{Pod: namespace + "/" + name, Limited: p.Limit > 0}
		if p.Claims != nil {
			if i := slices.IndexFunc(p.Claims.Shared, func(s policy.SharedClaim) bool { return s.Claim == claim.Name }); i >= 0 {
				u.GPUs = p.Claims.Shared[i].GPUs
			}
		}
		users = append(users, u)
	})
	owner := metav1.GetControllerOf(claim)
	entry, made := claim.Annotations[podClaimAnnotation]
	if owner == nil || owner.APIVersion != "v1" || owner.Kind != "Pod" || !made {
		return users, nil
	}
	var pod corev1.Pod
	err := v.API.Get(ctx, types.NamespacedName{Namespace: namespace, Name: owner.Name}, &pod)
	switch {
	case apierrors.IsNotFound(err):
		return users, nil
	case err != nil:
		return nil, fmt.Errorf("get pod %s/%s, which ResourceClaim %s is made for: %w", namespace, owner.Name, claim.Name, err)
	case pod.UID != owner.UID || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return users, nil
	}
	_, limited := pod.Annotations[policy.AnnotationPowerLimitValidated]
	return append(users, policy.ClaimUser{Pod: namespace + "/" + pod.Name, GPUs: policy.ClaimGPUsOf(&pod, entry), Limited: limited}), nil
}
