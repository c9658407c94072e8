package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Paths the webhooks are served on; the webhook configurations in
// deploy/webhook/ name the same.
const (
	MutatePath   = "/mutate-pods"
	ValidatePath = "/validate-pods"
)

var podKind = schema.GroupKind{Kind: "Pod"}

// Mutator is the mutating webhook: defaults, checks and stamps.
type Mutator struct {
	Policy  *policy.Admission
	Cluster policy.Cluster
	// Budgets supplies the budgets' default limits; nil when there are none.
	Budgets *budget.Ledger
	// Claims reads what pods' ResourceClaims ask; nil: no DRA.
	Claims  *ClaimResolver
	Metrics *Metrics
}

// Validator is the validating webhook: re-checks the final object, then
// charges it to the budgets.
type Validator struct {
	Policy  *policy.Admission
	Cluster policy.Cluster
	// Budgets charges admitted pods; nil when budgets are not enforced.
	Budgets *budget.Ledger
	// Claims reads what pods' ResourceClaims ask; nil: no DRA.
	Claims  *ClaimResolver
	Metrics *Metrics
}

// Handle implements admission.Handler.
func (m *Mutator) Handle(ctx context.Context, req admission.Request) admission.Response {
	return handle(ctx, "mutate", m.Metrics, req, func(pod, old *corev1.Pod) (admission.Response, error) {
		var budgetDefaults []policy.DefaultRule
		if _, limited := pod.Annotations[policy.AnnotationPowerLimit]; !limited && req.Operation == admissionv1.Create && m.Budgets != nil {
			var err error
			if budgetDefaults, err = m.Budgets.DefaultRules(ctx, pod.Namespace); err != nil {
				return admission.Response{}, err
			}
		}
		claims, err := claimsAtCreation(ctx, m.Claims, req, pod)
		if err != nil {
			return admission.Response{}, err
		}
		v := forRequest(m.Policy, req).Mutate(req.Operation, pod, old, m.Cluster, budgetDefaults, claims)
		if len(v.Errors) > 0 {
			return deny(pod, v), nil
		}
		resp := admission.Allowed("")
		resp.Patches = annotationPatch(pod.Annotations, v)
		if len(resp.Patches) > 0 {
			pt := admissionv1.PatchTypeJSONPatch
			resp.PatchType = &pt
		}
		resp.Warnings = v.Warnings
		return resp, nil
	})
}

// Handle implements admission.Handler.
func (h *Validator) Handle(ctx context.Context, req admission.Request) admission.Response {
	return handle(ctx, "validate", h.Metrics, req, func(pod, old *corev1.Pod) (admission.Response, error) {
		claims, err := claimsAtCreation(ctx, h.Claims, req, pod)
		if err != nil {
			return admission.Response{}, err
		}
		v := forRequest(h.Policy, req).Validate(req.Operation, pod, old, h.Cluster, claims)
		if len(v.Errors) > 0 {
			return deny(pod, v), nil
		}
		if h.Budgets == nil {
			return admission.Allowed(""), nil
		}
		dryRun := isDryRun(req)
		denial, err := h.Budgets.Admit(ctx, req.Operation, pod, old, h.Cluster, claims, dryRun)
		switch {
		case err != nil:
			return admission.Response{}, err
		case denial != "":
			// 403 Forbidden, as ResourceQuota answers "exceeded quota".
			return admission.Denied(denial), nil
		}
		return admission.Allowed(""), nil
	})
}

// claimsAtCreation reads what a new pod's claims ask; an update reads
// nothing: a claims pod's limit is set at its creation (policy refuses a new
// one later), and the claims' specs may have changed since.
func claimsAtCreation(ctx context.Context, r *ClaimResolver, req admission.Request, pod *corev1.Pod) (policy.ClaimsDemand, error) {
	if req.Operation != admissionv1.Create {
		return policy.ClaimsDemand{}, nil
	}
	return r.Demand(ctx, pod)
}

// forRequest is the policy a request is judged by: a dry run is checked as
// any request, but its stamp is not signed, so a dry run never hands out a
// signature that could be copied onto a pod created while the webhook is
// away.
func forRequest(p *policy.Admission, req admission.Request) *policy.Admission {
	if p.StampKey == nil || !isDryRun(req) {
		return p
	}
	unsigned := *p
	unsigned.StampKey = nil
	return &unsigned
}

func isDryRun(req admission.Request) bool { return req.DryRun != nil && *req.DryRun }

// handle decodes the pods of a request, runs decide, and records the outcome.
func handle(ctx context.Context, webhook string, m *Metrics, req admission.Request,
	decide func(pod, old *corev1.Pod) (admission.Response, error)) admission.Response {
	start := time.Now()
	resp, err := decodeAndDecide(req, decide)
	result := resultAllowed
	switch {
	case errors.Is(err, errDecode):
		result = resultError
		resp = admission.Errored(http.StatusBadRequest, err)
	case err != nil:
		result = resultError
		resp = admission.Errored(http.StatusInternalServerError, err)
	case !resp.Allowed:
		result = resultDenied
	}
	m.observe(webhook, req, resp, result, start)
	logDecision(ctx, webhook, req, resp, err)
	return resp
}

// logDecision logs errors, and each decision at V(4); the logger is only
// built when something is logged, off the path of most requests.
func logDecision(ctx context.Context, webhook string, req admission.Request, resp admission.Response, err error) {
	base := log.FromContext(ctx)
	if err == nil && !base.V(4).Enabled() {
		return
	}
	logger := base.WithValues("webhook", webhook, "operation", req.Operation,
		"pod", strings.TrimPrefix(req.Namespace+"/"+req.Name, "/"), "uid", req.UID)
	switch {
	case errors.Is(err, errDecode):
		logger.Error(err, "Failed to decode admission request")
	case err != nil:
		logger.Error(err, "Failed to decide on pod")
	case !resp.Allowed:
		logger.V(4).Info("Denied pod", "reason", resp.Result.Message)
	default:
		logger.V(4).Info("Admitted pod", "patches", len(resp.Patches), "warnings", len(resp.Warnings))
	}
}

// errDecode marks a request the webhook could not read.
var errDecode = errors.New("decode")

func decodeAndDecide(req admission.Request, decide func(pod, old *corev1.Pod) (admission.Response, error)) (admission.Response, error) {
	if req.SubResource != "" || req.Kind.Kind == "Binding" {
		return guardSubresource(req)
	}
	if req.Kind.Kind != "Pod" {
		return admission.Allowed("not a pod"), nil
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("operation not checked"), nil
	}
	pod, err := decodePod(req.Object.Raw)
	if err != nil {
		return admission.Response{}, fmt.Errorf("%w pod: %w", errDecode, err)
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	var old *corev1.Pod
	if req.Operation == admissionv1.Update {
		if old, err = decodePod(req.OldObject.Raw); err != nil {
			return admission.Response{}, fmt.Errorf("%w old pod: %w", errDecode, err)
		}
	}
	return decide(pod, old)
}

// guardSubresource denies a write that changes a pod's power annotations
// other than an update of the pod itself. Three paths can: pods/status keeps
// the annotations it is sent, and a Binding, created as pods/binding or
// through the top-level bindings resource, has its annotations merged into
// the pod; each skips the checks of a pod update, so the limit and the stamp
// may change only there. (pods/resize and pods/ephemeralcontainers reset the
// metadata; pods/eviction and the connect subresources change no pod.)
func guardSubresource(req admission.Request) (admission.Response, error) {
	var changed []string
	switch {
	case req.SubResource == "status" && req.Operation == admissionv1.Update:
		pod, err := decodePod(req.Object.Raw)
		if err != nil {
			return admission.Response{}, fmt.Errorf("%w pod: %w", errDecode, err)
		}
		old, err := decodePod(req.OldObject.Raw)
		if err != nil {
			return admission.Response{}, fmt.Errorf("%w old pod: %w", errDecode, err)
		}
		for _, key := range policy.WebhookAnnotations {
			v, has := pod.Annotations[key]
			was, had := old.Annotations[key]
			if has != had || v != was {
				changed = append(changed, key)
			}
		}
	case (req.SubResource == "binding" || req.Kind.Kind == "Binding") && req.Operation == admissionv1.Create:
		binding, err := decodePod(req.Object.Raw) // a Binding's metadata reads as a pod's
		if err != nil {
			return admission.Response{}, fmt.Errorf("%w binding: %w", errDecode, err)
		}
		for _, key := range policy.WebhookAnnotations {
			if _, has := binding.Annotations[key]; has {
				changed = append(changed, key)
			}
		}
	default:
		return admission.Allowed("subresource changes no power annotation"), nil
	}
	if len(changed) == 0 {
		return admission.Allowed(""), nil
	}
	var errs field.ErrorList
	path := "pods/" + req.SubResource
	if req.SubResource == "" {
		path = req.Resource.Resource
	}
	for _, key := range changed {
		errs = append(errs, field.Forbidden(field.NewPath("metadata", "annotations").Key(key),
			fmt.Sprintf("may not be set or changed through %s; change it on the pod itself, where the power webhook checks it", path)))
	}
	name := req.Name
	status := apierrors.NewInvalid(podKind, name, errs).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &status}}, nil
}

// deny answers 422 Invalid with one cause per field error, the way the API
// server's own validation answers.
func deny(pod *corev1.Pod, v policy.Verdict) admission.Response {
	name := pod.Name
	if name == "" {
		name = pod.GenerateName
	}
	status := apierrors.NewInvalid(podKind, name, v.Errors).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{
		Allowed: false, Result: &status, Warnings: v.Warnings,
	}}
}

// annotationPatch returns the JSON patch that makes the pod's annotations hold
// the verdict's limit, stamp, signature and claims' GPU counts ("" = absent),
// touching nothing else.
func annotationPatch(have map[string]string, v policy.Verdict) []jsonpatch.Operation {
	want := [...]struct{ key, value string }{
		{policy.AnnotationPowerLimit, v.Limit}, {policy.AnnotationPowerLimitValidated, v.Stamp}, {policy.AnnotationPowerLimitSignature, v.Signature},
		{policy.AnnotationClaimGPUs, v.ClaimGPUs}, {policy.AnnotationClaimGPUsSignature, v.ClaimSignature},
	}
	if have == nil {
		add := map[string]string{}
		for _, w := range want {
			if w.value != "" {
				add[w.key] = w.value
			}
		}
		if len(add) == 0 {
			return nil
		}
		return []jsonpatch.Operation{{Operation: "add", Path: "/metadata/annotations", Value: add}}
	}
	var ops []jsonpatch.Operation
	for _, w := range want {
		path := "/metadata/annotations/" + strings.ReplaceAll(strings.ReplaceAll(w.key, "~", "~0"), "/", "~1")
		cur, has := have[w.key]
		switch {
		case w.value == "" && has:
			ops = append(ops, jsonpatch.Operation{Operation: "remove", Path: path})
		case w.value != "" && !has:
			ops = append(ops, jsonpatch.Operation{Operation: "add", Path: path, Value: w.value})
		case w.value != "" && cur != w.value:
			ops = append(ops, jsonpatch.Operation{Operation: "replace", Path: path, Value: w.value})
		}
	}
	return ops
}
