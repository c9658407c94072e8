package policy_test

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A limit on a pod that requests no nvidia.com/gpu(.shared) is checked
// against no GPU, so it is never stamped: a pod that still reaches GPUs (a
// device-plugin resource renamed in its config, e.g. nvidia.com/a100-40gb, or
// NVIDIA_VISIBLE_DEVICES=all) must not cap a board other tenants use with a
// limit nothing checked, and budgets would charge it 0 W.
func TestLimitOnAPodWithoutGPUsIsNeverStamped(t *testing.T) {
	a := newAdmission(t)
	p := pod().Limit("1").Obj()
	p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/a100-40gb": resource.MustParse("2")}
	v := a.Mutate(admissionv1.Create, p, nil, fakeCluster{"h100-0": h100}, nil, policy.ClaimsDemand{})
	if len(v.Errors) == 0 && v.Stamp != "" {
		t.Errorf("a pod with no nvidia.com/gpu and limit %q was stamped %q (warnings %v); want no stamp (or a denial): nothing checked that limit", v.Limit, v.Stamp, v.Warnings)
	}
	v = a.Validate(admissionv1.Create, withStamp(p, "1"), nil, fakeCluster{"h100-0": h100}, policy.ClaimsDemand{})
	if len(v.Errors) == 0 {
		t.Errorf("Validate admitted limit 1 = stamp 1 on a pod with no nvidia.com/gpu; want it refused")
	}
}

func withStamp(p *corev1.Pod, s string) *corev1.Pod {
	p = p.DeepCopy()
	p.Annotations["dynamo.nvidia.com/gpu-power-limit-validated"] = s
	return p
}
