package policy

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Cluster is the read-only view of the cluster's GPU nodes that admission needs.
type Cluster interface {
	// NodeGPUProduct returns the nvidia.com/gpu.product label of a node as
	// written, and whether the node exists.
	NodeGPUProduct(node string) (product string, found bool)
	// GPUProducts returns every distinct nvidia.com/gpu.product label value
	// on the cluster's nodes, as written, sorted.
	GPUProducts() []string
}

// NormalizeProduct maps a GPU Feature Discovery product label to the catalog
// key: GFD appends "-SHARED" under time-slicing and "-MIG-<profile>" in MIG
// mode, neither of which changes the board's power range.
func NormalizeProduct(label string) string {
	s := strings.TrimSuffix(label, "-SHARED")
	if i := strings.Index(s, "-MIG-"); i > 0 {
		s = s[:i]
	}
	return s
}

// Candidates are the GPU products a pod can land on.
type Candidates struct {
	// Labels are the nvidia.com/gpu.product values as written, sorted, distinct.
	Labels []string
	// From says where they came from, for messages: `node "gpu-7"`,
	// "nodeSelector", "required node affinity" or "the cluster's GPU nodes".
	From string
}

// CandidatesOf finds the products a pod can land on. A pod bound to a node has
// that node's product. Otherwise a nodeSelector and required node affinity
// (the union of its terms, each the intersection of its In expressions on the
// product label) narrow the choice; a pod that pins nothing can land on any
// GPU product in the cluster.
func CandidatesOf(pod *corev1.Pod, cluster Cluster) Candidates {
	return PlacementOf(&pod.Spec).Candidates(cluster)
}

// Placement is what of a pod's spec decides the GPU products it can land on,
// read once: its node once bound, otherwise the products its nodeSelector
// and required node affinity pin. It holds no more than that, so a cache of
// every GPU pod can keep it.
type Placement struct {
	// Node is the node the pod is bound to; when set, nothing else counts.
	Node string
	// Pinned are the product labels the pod's selectors allow, sorted and
	// distinct, when PinnedBy is set; empty then means none can satisfy them.
	Pinned []string
	// PinnedBy names what pins them, for messages: "nodeSelector",
	// "required node affinity" or both; empty when nothing does.
	PinnedBy string
}

// PlacementOf reads a pod spec's placement.
func PlacementOf(spec *corev1.PodSpec) Placement {
	if spec.NodeName != "" {
		return Placement{Node: spec.NodeName}
	}
	var pinned []string
	var from []string
	if v, ok := spec.NodeSelector[LabelGPUProduct]; ok {
		pinned, from = []string{v}, append(from, "nodeSelector")
	}
	if values, ok := affinityProducts(spec.Affinity); ok {
		if pinned == nil {
			pinned = values
		} else {
			pinned = intersect(pinned, values)
		}
		from = append(from, "required node affinity")
	}
	if from == nil {
		return Placement{}
	}
	slices.Sort(pinned)
	return Placement{Pinned: slices.Compact(pinned), PinnedBy: strings.Join(from, " and ")}
}

// Candidates resolves a placement against the cluster's nodes.
func (p Placement) Candidates(cluster Cluster) Candidates {
	switch {
	case p.Node != "":
		c := Candidates{From: fmt.Sprintf("node %q", p.Node)}
		if product, found := cluster.NodeGPUProduct(p.Node); found && product != "" {
			c.Labels = []string{product}
		}
		return c
	case p.PinnedBy == "":
		return Candidates{Labels: cluster.GPUProducts(), From: "the cluster's GPU nodes"}
	}
	return Candidates{Labels: p.Pinned, From: p.PinnedBy}
}

// affinityProducts returns the products required node affinity allows, and
// false when some term leaves the product open.
func affinityProducts(a *corev1.Affinity) ([]string, bool) {
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return nil, false
	}
	terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) == 0 {
		return nil, false
	}
	var union []string
	for _, term := range terms {
		var allowed []string
		constrained := false
		for _, e := range term.MatchExpressions {
			if e.Key != LabelGPUProduct || e.Operator != corev1.NodeSelectorOpIn {
				continue
			}
			if !constrained {
				allowed, constrained = slices.Clone(e.Values), true
			} else {
				allowed = intersect(allowed, e.Values)
			}
		}
		if !constrained {
			return nil, false
		}
		union = append(union, allowed...)
	}
	return union, true
}

// intersect keeps the values of a that b holds, in linear time: a pod's
// affinity may repeat expressions with thousands of values (what the pod
// index reads on every event of the pod, on every replica).
func intersect(a, b []string) []string {
	in := make(map[string]struct{}, len(b))
	for _, v := range b {
		in[v] = struct{}{}
	}
	var out []string
	for _, v := range a {
		if _, ok := in[v]; ok {
			out = append(out, v)
		}
	}
	return out
}
