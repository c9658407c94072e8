package policy

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
)

// Cluster is the read-only view of the cluster's GPU nodes that admission needs.
type Cluster interface {
	// NodeGPUProduct returns the nvidia.com/gpu.product label of a node as
	// written, and whether the node exists.
	NodeGPUProduct(node string) (product string, found bool)
	// GPUProducts returns every distinct nvidia.com/gpu.product label value
	// on the cluster's nodes, as written, sorted.
	GPUProducts() []string
	// DRAProducts returns the products of the devices dynamic resource
	// allocation can give a pod that requests an extended resource: the
	// devices of the DeviceClasses that name it their extendedResourceName
	// (or of <class>, for deviceclass.resource.kubernetes.io/<class>), on
	// node, or on every node when node is "". Products are catalog keys
	// (DRAProduct), sorted and distinct; none when no class serves it.
	DRAProducts(resource corev1.ResourceName, node string) []string
}

// DRAProduct is the catalog key of a device's productName attribute (NVML's
// name, "NVIDIA H100 80GB HBM3"), as GPU Feature Discovery writes the same
// name in its label: spaces become dashes.
func DRAProduct(productName string) string {
	return strings.ReplaceAll(strings.TrimSpace(productName), " ", "-")
}

// DriverAttribute is a string attribute NVIDIA's DRA driver publishes on a
// device (type, uuid, parentUUID, productName, profile), named with or
// without the driver's domain; "" when it has none.
func DriverAttribute(d *resourcev1.Device, name string) string {
	for _, key := range []resourcev1.QualifiedName{resourcev1.QualifiedName(name), resourcev1.QualifiedName(DriverGPU + "/" + name)} {
		if a, ok := d.Attributes[key]; ok && a.StringValue != nil {
			return *a.StringValue
		}
	}
	return ""
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
	// "nodeSelector", "required node affinity", "the cluster's GPU nodes",
	// "the devices DRA publishes for <resource>", or several joined by "and".
	From string
	// OnlyDRA is set when they are all DRA devices' products
	// (Placement.OnlyDRA).
	OnlyDRA bool
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
	// DRA are the whole-GPU resources the pod requests that dynamic resource
	// allocation can serve (nvidia.com/gpu on a cluster whose DeviceClass
	// names it, NVIDIA's DeviceClasses' own), sorted; OnlyDRA is set when it
	// requests no resource the device plugin serves.
	DRA     []corev1.ResourceName
	OnlyDRA bool
}

// PlacementOf reads a pod spec's placement.
func PlacementOf(spec *corev1.PodSpec) Placement {
	dra, onlyDRA := draResources(spec)
	if spec.NodeName != "" {
		return Placement{Node: spec.NodeName, DRA: dra, OnlyDRA: onlyDRA}
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
		return Placement{DRA: dra, OnlyDRA: onlyDRA}
	}
	slices.Sort(pinned)
	return Placement{Pinned: slices.Compact(pinned), PinnedBy: strings.Join(from, " and ")}
}

// draResources are the whole-GPU resources a pod spec requests that DRA can
// serve, and whether it requests only those.
func draResources(spec *corev1.PodSpec) ([]corev1.ResourceName, bool) {
	var dra []corev1.ResourceName
	devicePlugin := false
	for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range cs {
			for _, name := range WholeGPUResources {
				if resourceCount(&cs[i], name) == 0 {
					continue
				}
				if name != ResourceGPUShared && !slices.Contains(dra, name) {
					dra = append(dra, name)
				}
				devicePlugin = devicePlugin || name == ResourceGPU || name == ResourceGPUShared
			}
		}
	}
	if len(dra) == 1 && dra[0] == ResourceGPU {
		// Nearly every GPU pod: one shared slice, not one each in a cache of
		// every GPU pod.
		return onlyResourceGPU, false
	}
	slices.Sort(dra)
	return dra, len(dra) > 0 && !devicePlugin
}

// onlyResourceGPU is the DRA of a pod that requests nvidia.com/gpu alone;
// never modified.
var onlyResourceGPU = []corev1.ResourceName{ResourceGPU}

// Candidates resolves a placement against the cluster's nodes and the
// devices DRA publishes. A pod pinned to products by label is held to them:
// only nodes with the label can take it.
func (p Placement) Candidates(cluster Cluster) Candidates {
	if p.Node == "" && p.PinnedBy != "" {
		return Candidates{Labels: p.Pinned, From: p.PinnedBy}
	}
	c := Candidates{OnlyDRA: p.OnlyDRA}
	var from []string
	if p.Node != "" {
		from = append(from, fmt.Sprintf("node %q", p.Node))
		if product, found := cluster.NodeGPUProduct(p.Node); found && product != "" && !p.OnlyDRA {
			c.Labels = []string{product}
		}
	} else if !p.OnlyDRA {
		c.Labels, from = cluster.GPUProducts(), append(from, "the cluster's GPU nodes")
	}
	merged := false
	for _, r := range p.DRA {
		products := cluster.DRAProducts(r, p.Node)
		if len(products) > 0 {
			// The cluster's slices are its own: merged into a copy.
			c.Labels, merged = append(slices.Clone(c.Labels), products...), true
		}
		if p.Node == "" && (len(products) > 0 || p.OnlyDRA) {
			from = append(from, fmt.Sprintf("the devices DRA publishes for %s", r))
		}
	}
	if merged {
		slices.Sort(c.Labels)
		c.Labels = slices.Compact(c.Labels)
	}
	c.From = strings.Join(from, " and ")
	return c
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
