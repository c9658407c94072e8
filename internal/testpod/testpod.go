// Package testpod builds pods for tests in one readable line:
//
//	testpod.MakePod("decode-0", "llm").GPU(4).Limit("250").Obj()
//
// and declares, once, what of a pod pkg/policy reads (PolicyView, view.go),
// the view the webhook's decoder and policy's own tests are held to.
package testpod

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Wrapper wraps a pod under construction.
type Wrapper struct{ corev1.Pod }

// MakePod returns a pod with one container that asks for nothing.
func MakePod(name, namespace string) *Wrapper {
	return &Wrapper{corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "main", Image: "registry.example/worker:1"}},
		},
	}}
}

// Obj returns the pod.
func (w *Wrapper) Obj() *corev1.Pod { return &w.Pod }

// GPU requests n whole GPUs in the first container.
func (w *Wrapper) GPU(n int64) *Wrapper {
	return w.Resource(0, policy.ResourceGPU, n)
}

// Resource requests n of a resource in the i-th app container (requests = limits).
func (w *Wrapper) Resource(i int, name corev1.ResourceName, n int64) *Wrapper {
	setResource(&w.Spec.Containers[i].Resources, name, n)
	return w
}

// Quantity requests a resource in the i-th app container as the quantity
// string q (requests = limits): "20e15", "1e30", "-1", "0.5".
func (w *Wrapper) Quantity(i int, name corev1.ResourceName, q string) *Wrapper {
	r := &w.Spec.Containers[i].Resources
	setResource(r, name, 0)
	r.Requests[name], r.Limits[name] = resource.MustParse(q), resource.MustParse(q)
	return w
}

// GPULimitOnly sets nvidia.com/gpu as a limit without a request in the first
// container, as users write it (the API server defaults the request).
func (w *Wrapper) GPULimitOnly(n int64) *Wrapper {
	c := &w.Spec.Containers[0]
	if c.Resources.Limits == nil {
		c.Resources.Limits = corev1.ResourceList{}
	}
	c.Resources.Limits[policy.ResourceGPU] = *resource.NewQuantity(n, resource.DecimalSI)
	return w
}

// Container adds an app container requesting gpus GPUs.
func (w *Wrapper) Container(name string, gpus int64) *Wrapper {
	w.Spec.Containers = append(w.Spec.Containers, container(name, "registry.example/worker:1", gpus))
	return w
}

// InitContainer adds an init container requesting gpus GPUs.
func (w *Wrapper) InitContainer(name string, gpus int64) *Wrapper {
	w.Spec.InitContainers = append(w.Spec.InitContainers, container(name, "registry.example/init:1", gpus))
	return w
}

func container(name, image string, gpus int64) corev1.Container {
	c := corev1.Container{Name: name, Image: image}
	if gpus > 0 {
		setResource(&c.Resources, policy.ResourceGPU, gpus)
	}
	return c
}

// Sidecar adds a restartable init container requesting gpus GPUs.
func (w *Wrapper) Sidecar(name string, gpus int64) *Wrapper {
	w.InitContainer(name, gpus)
	always := corev1.ContainerRestartPolicyAlways
	w.Spec.InitContainers[len(w.Spec.InitContainers)-1].RestartPolicy = &always
	return w
}

// Env adds n environment variables to every app container.
func (w *Wrapper) Env(n int) *Wrapper {
	for i := range w.Spec.Containers {
		for j := range n {
			w.Spec.Containers[i].Env = append(w.Spec.Containers[i].Env, corev1.EnvVar{
				Name:  fmt.Sprintf("DYN_WORKER_SETTING_%02d", j),
				Value: fmt.Sprintf("value-%02d-of-a-realistic-length", j),
			})
		}
	}
	return w
}

// Limit sets the power-limit annotation.
func (w *Wrapper) Limit(watts string) *Wrapper {
	return w.Annotation(policy.AnnotationPowerLimit, watts)
}

// Stamp sets the validation stamp annotation.
func (w *Wrapper) Stamp(watts string) *Wrapper {
	return w.Annotation(policy.AnnotationPowerLimitValidated, watts)
}

// Annotation sets an annotation.
func (w *Wrapper) Annotation(key, value string) *Wrapper {
	if w.Annotations == nil {
		w.Annotations = map[string]string{}
	}
	w.Annotations[key] = value
	return w
}

// Label sets a label.
func (w *Wrapper) Label(key, value string) *Wrapper {
	if w.Labels == nil {
		w.Labels = map[string]string{}
	}
	w.Labels[key] = value
	return w
}

// UID sets the pod's UID, as the API server does before validating admission.
func (w *Wrapper) UID(uid string) *Wrapper {
	w.ObjectMeta.UID = types.UID(uid)
	return w
}

// NodeName binds the pod to a node.
func (w *Wrapper) NodeName(node string) *Wrapper {
	w.Spec.NodeName = node
	return w
}

// Product pins the pod to a GPU product with a nodeSelector.
func (w *Wrapper) Product(label string) *Wrapper {
	if w.Spec.NodeSelector == nil {
		w.Spec.NodeSelector = map[string]string{}
	}
	w.Spec.NodeSelector[policy.LabelGPUProduct] = label
	return w
}

// AffinityProducts adds a required node affinity term allowing these products.
func (w *Wrapper) AffinityProducts(labels ...string) *Wrapper {
	return w.AffinityTerm(corev1.NodeSelectorRequirement{
		Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: labels,
	})
}

// AffinityTerm adds a required node affinity term with these expressions.
func (w *Wrapper) AffinityTerm(exprs ...corev1.NodeSelectorRequirement) *Wrapper {
	if w.Spec.Affinity == nil {
		w.Spec.Affinity = &corev1.Affinity{}
	}
	if w.Spec.Affinity.NodeAffinity == nil {
		w.Spec.Affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	na := w.Spec.Affinity.NodeAffinity
	if na.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		na.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{}
	}
	req := na.RequiredDuringSchedulingIgnoredDuringExecution
	req.NodeSelectorTerms = append(req.NodeSelectorTerms, corev1.NodeSelectorTerm{MatchExpressions: exprs})
	return w
}

// ResourceClaim adds a DRA resource claim from a template.
func (w *Wrapper) ResourceClaim(name, template string) *Wrapper {
	w.Spec.ResourceClaims = append(w.Spec.ResourceClaims, corev1.PodResourceClaim{Name: name, ResourceClaimTemplateName: &template})
	return w
}

// NamedClaim adds a DRA resource claim that names a ResourceClaim, which
// other pods may use too.
func (w *Wrapper) NamedClaim(name, claim string) *Wrapper {
	w.Spec.ResourceClaims = append(w.Spec.ResourceClaims, corev1.PodResourceClaim{Name: name, ResourceClaimName: &claim})
	return w
}

func setResource(r *corev1.ResourceRequirements, name corev1.ResourceName, n int64) {
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	if r.Limits == nil {
		r.Limits = corev1.ResourceList{}
	}
	q := *resource.NewQuantity(n, resource.DecimalSI)
	r.Requests[name], r.Limits[name] = q, q
}
