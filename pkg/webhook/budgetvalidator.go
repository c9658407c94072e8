package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	admissionv1 "k8s.io/api/admission/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/budget"
)

// BudgetValidatePath is where GPUPowerBudget writes are validated.
const BudgetValidatePath = "/validate-gpupowerbudgets"

var budgetKind = schema.GroupKind{Group: powerv1alpha1.GroupVersion.Group, Kind: "GPUPowerBudget"}

// BudgetValidator is the validating webhook for GPUPowerBudget writes.
type BudgetValidator struct{}

// Handle implements admission.Handler.
func (BudgetValidator) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("operation not checked")
	}
	var b powerv1alpha1.GPUPowerBudget
	if err := json.Unmarshal(req.Object.Raw, &b); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode GPUPowerBudget: %w", err))
	}
	errs := budget.ValidateSpec(&b.Spec)
	if len(errs) == 0 {
		return admission.Allowed("")
	}
	status := apierrors.NewInvalid(budgetKind, b.Name, errs).ErrStatus
	return admission.Response{AdmissionResponse: admissionv1.AdmissionResponse{Allowed: false, Result: &status}}
}
