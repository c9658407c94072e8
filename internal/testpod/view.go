package testpod

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// PolicyView is the one declaration of what of a pod pkg/policy's admission
// and budget decisions read (Mutate, Validate, DemandOf, ChargeableOf,
// CostOf, PlacementOf, CandidatesOf): identity, labels, annotations, node
// name, node selector, affinity, resource claims, and each container's
// name, restart policy and the resources policy reads (nvidia.com/ and
// deviceclass.resource.kubernetes.io/). Two tests hold the code
// to it: policy's FuzzPolicyReadsOnlyThePodView (every such decision is the
// same on a pod and on its view) and the webhook's decoder tests (decodePod
// reads exactly the view). StampKey.Validated reads the creation time too:
// it judges stored pods (the pod index, the agent), never a decoded one.
func PolicyView(p *corev1.Pod) *corev1.Pod {
	out := &corev1.Pod{}
	out.Name, out.GenerateName, out.Namespace, out.UID = p.Name, p.GenerateName, p.Namespace, p.UID
	out.Labels, out.Annotations = p.Labels, p.Annotations
	s := &out.Spec
	s.NodeName, s.NodeSelector, s.Affinity, s.ResourceClaims = p.Spec.NodeName, p.Spec.NodeSelector, p.Spec.Affinity, p.Spec.ResourceClaims
	s.Containers, s.InitContainers = viewContainers(p.Spec.Containers), viewContainers(p.Spec.InitContainers)
	return out
}

func viewContainers(cs []corev1.Container) []corev1.Container {
	if cs == nil {
		return nil
	}
	out := make([]corev1.Container, len(cs))
	for i, c := range cs {
		out[i] = corev1.Container{Name: c.Name, RestartPolicy: c.RestartPolicy}
		out[i].Resources.Requests = nvidiaOnly(c.Resources.Requests)
		out[i].Resources.Limits = nvidiaOnly(c.Resources.Limits)
	}
	return out
}

func nvidiaOnly(list corev1.ResourceList) corev1.ResourceList {
	var out corev1.ResourceList
	for name, q := range list {
		if policy.ReadsResource(string(name)) {
			if out == nil {
				out = corev1.ResourceList{}
			}
			out[name] = q
		}
	}
	return out
}
