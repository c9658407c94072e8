package agent

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// gpuNode is a node as GPU Feature Discovery labels it, with taints.
func gpuNode(labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	if labels == nil {
		labels = map[string]string{"nvidia.com/gpu.present": "true", "kubernetes.io/hostname": "gpu-node-0", "gpu.count": "8"}
	}
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "gpu-node-0", Labels: labels}, Spec: corev1.NodeSpec{Taints: taints}}
}

// shipped is the DaemonSet of deploy/agent/daemonset.yaml; change edits a
// copy of it.
func shipped(change ...func(*corev1.PodSpec)) *DaemonSet {
	ds := &DaemonSet{Pod: corev1.PodSpec{
		NodeSelector: map[string]string{"nvidia.com/gpu.present": "true"},
		Tolerations:  []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
	}}
	for _, c := range change {
		c(&ds.Pod)
	}
	return ds
}

func requiring(terms ...corev1.NodeSelectorTerm) func(*corev1.PodSpec) {
	return func(s *corev1.PodSpec) {
		s.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
	}
}

func expr(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
	return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func nameIs(op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
	return corev1.NodeSelectorTerm{MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: op, Values: values}}}
}

func tolerating(tols ...corev1.Toleration) func(*corev1.PodSpec) {
	return func(s *corev1.PodSpec) { s.Tolerations = append(s.Tolerations, tols...) }
}

func taint(key, value string, effect corev1.TaintEffect) corev1.Taint {
	return corev1.Taint{Key: key, Value: value, Effect: effect}
}

func TestSuccessorWillRun(t *testing.T) {
	deleting := shipped()
	deleting.Deleting = true
	tests := []struct {
		name string
		ds   *DaemonSet
		node *corev1.Node
		keep bool
		why  string // part of the reason, when restoring
	}{
		{"rolling update: the node still matches", shipped(), gpuNode(nil), true, ""},
		{"uninstall: DaemonSet gone", nil, gpuNode(nil), false, "DaemonSet deleted"},
		{"uninstall: DaemonSet being deleted", deleting, gpuNode(nil), false, "being deleted"},
		{"node deleted", shipped(), nil, false, "node deleted"},
		{"node lost nvidia.com/gpu.present", shipped(), gpuNode(map[string]string{"kubernetes.io/hostname": "gpu-node-0"}), false, "nodeSelector"},
		{"nvidia.com/gpu.present=false", shipped(), gpuNode(map[string]string{"nvidia.com/gpu.present": "false"}), false, "nodeSelector"},
		{"DaemonSet without a nodeSelector: every node", shipped(func(s *corev1.PodSpec) { s.NodeSelector = nil }), gpuNode(map[string]string{}), true, ""},
		{"template pinned to another node", shipped(func(s *corev1.PodSpec) { s.NodeName = "gpu-node-1" }), gpuNode(nil), false, "gpu-node-1"},
		{"template pinned to this node", shipped(func(s *corev1.PodSpec) { s.NodeName = "gpu-node-0" }), gpuNode(nil), true, ""},

		{"nvidia.com/gpu NoSchedule taint: tolerated", shipped(), gpuNode(nil, taint("nvidia.com/gpu", "present", corev1.TaintEffectNoSchedule)), true, ""},
		{"nvidia.com/gpu NoExecute taint: the toleration is for NoSchedule", shipped(),
			gpuNode(nil, taint("nvidia.com/gpu", "present", corev1.TaintEffectNoExecute)), false, "nvidia.com/gpu=present:NoExecute"},
		{"another NoSchedule taint: no new daemon pod, though a running one could stay", shipped(),
			gpuNode(nil, taint("dedicated", "infra", corev1.TaintEffectNoSchedule)), false, "dedicated=infra:NoSchedule"},
		{"PreferNoSchedule taint: ignored", shipped(), gpuNode(nil, taint("dedicated", "infra", corev1.TaintEffectPreferNoSchedule)), true, ""},
		{"cordoned: daemon pods tolerate unschedulable", shipped(), gpuNode(nil, taint(corev1.TaintNodeUnschedulable, "", corev1.TaintEffectNoSchedule)), true, ""},
		{"not ready, unreachable, under pressure: daemon pods tolerate them", shipped(), gpuNode(nil,
			taint(corev1.TaintNodeNotReady, "", corev1.TaintEffectNoExecute), taint(corev1.TaintNodeUnreachable, "", corev1.TaintEffectNoExecute),
			taint(corev1.TaintNodeMemoryPressure, "", corev1.TaintEffectNoSchedule), taint(corev1.TaintNodeDiskPressure, "", corev1.TaintEffectNoSchedule),
			taint(corev1.TaintNodePIDPressure, "", corev1.TaintEffectNoSchedule)), true, ""},
		{"not ready, unreachable, network unavailable, NoSchedule: passing, the pod comes once they clear", shipped(), gpuNode(nil,
			taint(corev1.TaintNodeNotReady, "", corev1.TaintEffectNoSchedule), taint(corev1.TaintNodeUnreachable, "", corev1.TaintEffectNoSchedule),
			taint(corev1.TaintNodeNetworkUnavailable, "", corev1.TaintEffectNoSchedule)), true, ""},
		{"toleration of every taint (empty key, Exists)", shipped(tolerating(corev1.Toleration{Operator: corev1.TolerationOpExists})),
			gpuNode(nil, taint("dedicated", "infra", corev1.TaintEffectNoExecute)), true, ""},
		{"Equal toleration, other value", shipped(tolerating(corev1.Toleration{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule})),
			gpuNode(nil, taint("dedicated", "infra", corev1.TaintEffectNoSchedule)), false, "dedicated=infra:NoSchedule"},
		{"Equal toleration, any effect", shipped(tolerating(corev1.Toleration{Key: "dedicated", Value: "infra"})),
			gpuNode(nil, taint("dedicated", "infra", corev1.TaintEffectNoExecute)), true, ""},
		{"Gt toleration (alpha, off by default): does not tolerate",
			shipped(tolerating(corev1.Toleration{Key: "tier", Operator: corev1.TolerationOpGt, Value: "1"})),
			gpuNode(nil, taint("tier", "5", corev1.TaintEffectNoSchedule)), false, "tier=5:NoSchedule"},

		{"required affinity In: matches", shipped(requiring(expr("gpu.count", corev1.NodeSelectorOpIn, "4", "8"))), gpuNode(nil), true, ""},
		{"required affinity NotIn: excluded", shipped(requiring(expr("gpu.count", corev1.NodeSelectorOpNotIn, "8"))), gpuNode(nil), false, "affinity"},
		{"required affinity DoesNotExist on a present label", shipped(requiring(expr("nvidia.com/gpu.present", corev1.NodeSelectorOpDoesNotExist))),
			gpuNode(nil), false, "affinity"},
		{"required affinity Gt", shipped(requiring(expr("gpu.count", corev1.NodeSelectorOpGt, "4"))), gpuNode(nil), true, ""},
		{"required affinity Lt", shipped(requiring(expr("gpu.count", corev1.NodeSelectorOpLt, "4"))), gpuNode(nil), false, "affinity"},
		{"terms are ORed", shipped(requiring(expr("zone", corev1.NodeSelectorOpIn, "a"), expr("gpu.count", corev1.NodeSelectorOpExists))),
			gpuNode(nil), true, ""},
		{"expressions in a term are ANDed", shipped(requiring(corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "gpu.count", Operator: corev1.NodeSelectorOpExists}, {Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}})),
			gpuNode(nil), false, "affinity"},
		{"only empty terms: nothing matches", shipped(requiring(corev1.NodeSelectorTerm{})), gpuNode(nil), false, "affinity"},
		{"an empty term is ignored beside one that matches", shipped(requiring(corev1.NodeSelectorTerm{}, expr("gpu.count", corev1.NodeSelectorOpExists))),
			gpuNode(nil), true, ""},
		{"a term that does not parse matches nothing", shipped(requiring(expr("gpu.count", "Near", "8"))), gpuNode(nil), false, "affinity"},
		{"In without values does not parse", shipped(requiring(expr("gpu.count", corev1.NodeSelectorOpIn))), gpuNode(nil), false, "affinity"},
		{"matchFields metadata.name In this node", shipped(requiring(nameIs(corev1.NodeSelectorOpIn, "gpu-node-0"))), gpuNode(nil), true, ""},
		{"matchFields metadata.name In another node", shipped(requiring(nameIs(corev1.NodeSelectorOpIn, "gpu-node-1"))), gpuNode(nil), false, "affinity"},
		{"matchFields metadata.name NotIn this node", shipped(requiring(nameIs(corev1.NodeSelectorOpNotIn, "gpu-node-0"))), gpuNode(nil), false, "affinity"},
		{"matchFields with two values does not parse", shipped(requiring(nameIs(corev1.NodeSelectorOpIn, "gpu-node-0", "gpu-node-1"))),
			gpuNode(nil), false, "affinity"},
		{"preferred affinity alone: ignored", shipped(func(s *corev1.PodSpec) {
			s.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{
				{Weight: 1, Preference: expr("zone", corev1.NodeSelectorOpIn, "a")}}}}
		}), gpuNode(nil), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			keep, why := SuccessorWillRun(tt.ds, tt.node)
			if keep != tt.keep || (!keep && !strings.Contains(why, tt.why)) || (keep && why != "") {
				t.Errorf("SuccessorWillRun = %v, %q; want %v, %q", keep, why, tt.keep, tt.why)
			}
		})
	}
}
