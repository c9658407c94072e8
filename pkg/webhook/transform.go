package webhook

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrimNode keeps what admission reads of a node (its name and labels), so the
// cache of a thousand-node cluster stays small.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels,
	}}, nil
}

// TrimNamespace keeps a namespace's name and labels: budgets select by label.
func TrimNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion, Labels: ns.Labels,
	}}, nil
}

// TrimPod keeps what power policy reads of a pod: identity, labels, the power
// annotations, the node and its selectors, container resources and the phase. Memory stays flat
// when the cluster runs a hundred thousand pods.
func TrimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			Labels: p.Labels, DeletionTimestamp: p.DeletionTimestamp, Annotations: powerAnnotations(p.Annotations),
		},
		Spec: corev1.PodSpec{
			NodeName:       p.Spec.NodeName,
			NodeSelector:   p.Spec.NodeSelector,
			Affinity:       p.Spec.Affinity,
			Containers:     trimContainers(p.Spec.Containers),
			InitContainers: trimContainers(p.Spec.InitContainers),
			ResourceClaims: p.Spec.ResourceClaims,
		},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}
	return out, nil
}

func powerAnnotations(all map[string]string) map[string]string {
	var out map[string]string
	for _, k := range powerAnnotationKeys {
		if v, ok := all[k]; ok {
			if out == nil {
				out = make(map[string]string, 2)
			}
			out[k] = v
		}
	}
	return out
}

func trimContainers(cs []corev1.Container) []corev1.Container {
	if len(cs) == 0 {
		return nil
	}
	out := make([]corev1.Container, len(cs))
	for i, c := range cs {
		out[i] = corev1.Container{Name: c.Name, Resources: c.Resources, RestartPolicy: c.RestartPolicy}
	}
	return out
}
