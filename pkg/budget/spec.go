package budget

import (
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
)

// ValidateSpec checks what the CRD's schema cannot: that every label
// selector of a budget can be evaluated (operators, keys, values). The same
// check refuses a budget when it is written and, for one written before it
// existed, marks it on its status and makes it select nothing.
func ValidateSpec(spec *powerv1alpha1.GPUPowerBudgetSpec) field.ErrorList {
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
