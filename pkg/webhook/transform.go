package webhook

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TrimNode keeps what admission reads of a node: its name and GPU product
// label. A GPU node carries dozens of labels (GPU Feature Discovery, node
// feature discovery, the cloud's); the cache of a five-thousand-node cluster
// keeps one of each.
func TrimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	out := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion}}
	if product, ok := n.Labels[policy.LabelGPUProduct]; ok {
		out.Labels = map[string]string{policy.LabelGPUProduct: product}
	}
	return out, nil
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
