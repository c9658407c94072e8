package policy_test

import (
	"reflect"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/randfill"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// randomPod fills every field of a pod from seed, then makes it a GPU pod
// the policy has something to decide about: GPUs, a limit, a node, product
// affinity. Fields outside testpod.PolicyView get random values too.
func randomPod(seed int64, gpus uint8, limit string, node uint8) *corev1.Pod {
	var pod corev1.Pod
	pick := func(c randfill.Continue, from ...string) string { return from[c.Intn(len(from))] }
	products := []string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", "NVIDIA-L4-SHARED", "unknown"}
	randfill.NewWithSeed(seed).NilChance(0.3).NumElements(0, 3).Funcs(
		// The values policy branches on, so that its decisions vary.
		func(l *corev1.ResourceList, c randfill.Continue) {
			*l = corev1.ResourceList{}
			for range c.Intn(4) {
				name := pick(c, string(policy.ResourceGPU), "nvidia.com/gpu.shared", "nvidia.com/mig-1g.10gb", "cpu", "memory",
					policy.ResourceDRAGPU, policy.ResourceDRAMIG, policy.ResourceDRAVFIO)
				(*l)[corev1.ResourceName(name)] = *resource.NewQuantity(c.Int63n(9), resource.DecimalSI)
			}
		},
		func(p *corev1.ContainerRestartPolicy, c randfill.Continue) {
			*p = corev1.ContainerRestartPolicy(pick(c, "Always", "Never", "OnFailure"))
		},
		func(r *corev1.NodeSelectorRequirement, c randfill.Continue) {
			r.Key = pick(c, policy.LabelGPUProduct, "topology.kubernetes.io/zone")
			r.Operator = corev1.NodeSelectorOperator(pick(c, "In", "NotIn", "Exists", "DoesNotExist"))
			r.Values = []string{pick(c, products...)}
		},
		func(m *map[string]string, c randfill.Continue) {
			*m = map[string]string{}
			for range c.Intn(3) {
				(*m)[pick(c, policy.LabelGPUProduct, "role", policy.AnnotationPowerLimitValidated, policy.AnnotationPowerLimitSignature)] = pick(c, append(products, "250", "300")...)
			}
		},
	).Fill(&pod)
	if len(pod.Spec.Containers) == 0 {
		pod.Spec.Containers = []corev1.Container{{Name: "main"}}
	}
	c := &pod.Spec.Containers[0]
	if c.Resources.Limits == nil {
		c.Resources.Limits = corev1.ResourceList{}
	}
	c.Resources.Limits[policy.ResourceGPU] = *resource.NewQuantity(int64(gpus%9), resource.DecimalSI)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	if limit != "" {
		pod.Annotations[policy.AnnotationPowerLimit] = limit
	}
	pod.Spec.NodeName = []string{"", "h100-0", "l4-0", "unknown-0"}[node%4]
	if node%3 == 0 {
		pod.Spec.NodeSelector = map[string]string{policy.LabelGPUProduct: "NVIDIA-L4"}
	}
	return &pod
}

// Everything policy decides from a pod it decides from testpod.PolicyView
// of it alike, the view the webhook's decoder reads: a check that starts
// reading another field (tolerations, a container's env) fails here until
// the view, and with it the decoder, reads that field too.
func FuzzPolicyReadsOnlyThePodView(f *testing.F) {
	for i, limit := range []string{"", "250", "900", "abc", "0250", "150"} {
		f.Add(int64(i), uint8(i+1), limit, uint8(i))
	}
	cluster := fakeCluster{"h100-0": "NVIDIA-H100-80GB-HBM3", "l4-0": "NVIDIA-L4"}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	adm := &policy.Admission{Catalog: policy.DefaultCatalog(), UnknownProducts: policy.UnknownProductsDeny,
		StampKey: policy.NewStampKey([]byte("view-test-key-material-32-bytes!")), Now: func() time.Time { return now }}
	defaults := []policy.DefaultRule{{Selector: labels.Everything(), Watts: 300, Origin: "test"}}
	f.Fuzz(func(t *testing.T, seed int64, gpus uint8, limit string, node uint8) {
		pod := randomPod(seed, gpus, limit, node)
		old := randomPod(seed+1, gpus, "300", node)
		view, oldView := testpod.PolicyView(pod), testpod.PolicyView(old)
		same := func(what string, full, fromView any) {
			t.Helper()
			if !reflect.DeepEqual(full, fromView) {
				t.Fatalf("%s differs between the pod and its PolicyView:\npod:  %+v\nview: %+v", what, full, fromView)
			}
		}
		same("Mutate(CREATE)", adm.Mutate(admissionv1.Create, pod, nil, cluster, defaults, policy.ClaimsDemand{}), adm.Mutate(admissionv1.Create, view, nil, cluster, defaults, policy.ClaimsDemand{}))
		same("Mutate(UPDATE)", adm.Mutate(admissionv1.Update, pod, old, cluster, nil, policy.ClaimsDemand{}), adm.Mutate(admissionv1.Update, view, oldView, cluster, nil, policy.ClaimsDemand{}))
		same("Validate(CREATE)", adm.Validate(admissionv1.Create, pod, nil, cluster, policy.ClaimsDemand{}), adm.Validate(admissionv1.Create, view, nil, cluster, policy.ClaimsDemand{}))
		same("Validate(UPDATE)", adm.Validate(admissionv1.Update, pod, old, cluster, policy.ClaimsDemand{}), adm.Validate(admissionv1.Update, view, oldView, cluster, policy.ClaimsDemand{}))
		same("ChargeableOf", policy.ChargeableOf(pod), policy.ChargeableOf(view))
		same("CostOf", adm.Catalog.CostOf(pod, cluster, true), adm.Catalog.CostOf(view, cluster, true))
		same("DemandOf", policy.DemandOf(&pod.Spec), policy.DemandOf(&view.Spec))
		same("PlacementOf", policy.PlacementOf(&pod.Spec), policy.PlacementOf(&view.Spec))
		same("CandidatesOf", policy.CandidatesOf(pod, cluster), policy.CandidatesOf(view, cluster))
	})
}
