package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
)

// BudgetValidatePath is where GPUPowerBudget writes are validated.
const BudgetValidatePath = "/validate-gpupowerbudgets"

var budgetKind = schema.GroupKind{Group: powerv1alpha1.GroupVersion.Group, Kind: "GPUPowerBudget"}

// validateBudgetSpec checks what the CRD's schema cannot: that every label
// selector of a budget can be evaluated (operators, keys, values). The same
// check refuses a budget when it is written and, for one written before it
// existed, marks it on its status and makes it select nothing.
func validateBudgetSpec(spec *powerv1alpha1.GPUPowerBudgetSpec) field.ErrorList {
	opts := metav1validation.LabelSelectorValidationOptions{}
	specPath := field.NewPath("spec")
	var errs field.ErrorList
	if spec.NamespaceSelector != nil {
		errs = append(errs, metav1validation.ValidateLabelSelector(spec.NamespaceSelector, opts, specPath.Child("namespaceSelector"))...)
	}
	for i, d := range spec.Defaults {
		if d.PodSelector != nil {
			errs = append(errs, metav1validation.ValidateLabelSelector(d.PodSelector, opts, specPath.Child("defaults").Index(i).Child("podSelector"))...)
		}
	}
	return errs
}

// BudgetValidator is the validating webhook for GPUPowerBudget writes.
type BudgetValidator struct{}

// Handle implements admission.Handler.
func (BudgetValidator) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("operation not checked")
	}
	var budget powerv1alpha1.GPUPowerBudget
	if err := json.Unmarshal(req.Object.Raw, &budget); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode GPUPowerBudget: %w", err))
	}
	errs := validateBudgetSpec(&budget.Spec)
	if len(errs) == 0 {
		return admission.Allowed("")
	}
	status := apierrors.NewInvalid(budgetKind, budget.Name, errs).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &status}}
}
