package agent

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/sets"
)

// Shutdown keeps the caps only for a successor: when the DaemonSet will run
// a new agent pod on this node (a rolling update, a deleted or evicted agent
// pod). An uninstall, a node that left the DaemonSet (it lost the label its
// nodeSelector asks, or took a taint it does not tolerate), or restoreOnExit
// (--restore-on-exit) gives every owned GPU back: no agent would come to do
// it. successorWillRun reads the cluster (kube.Client.SuccessorWillRun); when
// it cannot tell, the caps are kept.
func (e *Enforcer) Shutdown(restoreOnExit bool, successorWillRun func(context.Context) (bool, string, error)) error {
	restore, why := restoreOnExit, "--restore-on-exit"
	if !restore {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keep, reason, err := successorWillRun(ctx)
		if err != nil {
			e.Log.Error(err, "Could not tell whether another agent will run on this node; keeping caps for it")
		} else if !keep {
			restore, why = true, reason
		}
	}
	if !restore {
		e.Log.Info("Keeping GPU caps for the next agent", "ownedGPUs", len(e.Ledger.Owned()))
		return nil
	}
	e.Log.Info("Restoring every capped GPU before exit", "reason", why, "ownedGPUs", len(e.Ledger.Owned()))
	return e.RestoreAll()
}

// DaemonSet is what of the agent's DaemonSet, read at shutdown, decides
// whether it runs a pod on a node again. pkg/agent/kube reads it without
// linking the apps/v1 types.
type DaemonSet struct {
	// Deleting is set when the DaemonSet has a deletionTimestamp.
	Deleting bool
	// Pod is its pod template's spec. Only NodeName, NodeSelector, Affinity,
	// Tolerations and HostNetwork are read.
	Pod corev1.PodSpec
}

// SuccessorWillRun says whether the DaemonSet controller will run a new agent
// pod on node once this one is gone, and if not, why. A cap outlives its agent
// only for such a successor, which adopts it from the ledger; otherwise (an
// uninstall, or a node that left the DaemonSet: it lost
// nvidia.com/gpu.present, or took a taint the agent does not tolerate) no
// agent would ever give the GPUs their limits back. ds nil means the DaemonSet
// is gone, node nil that the node is.
//
// It is the DaemonSet controller's rule for creating a daemon pod
// (NodeShouldRunDaemonPod's shouldRun): the template's nodeName, its
// nodeSelector and required node affinity, and every NoSchedule or NoExecute
// taint tolerated by the template's tolerations plus those the controller adds
// to every daemon pod. An untolerated NoSchedule taint lets a running daemon
// pod stay, but no new one is created, so it means no successor. One
// departure: the taints the node lifecycle controller sets from the node's
// health (not ready, unreachable, network unavailable) are passing states,
// not a decision about the node; the controller creates the pod once they
// clear. A kubelet shutting its node down reports it not ready, for one.
func SuccessorWillRun(ds *DaemonSet, node *corev1.Node) (bool, string) {
	switch {
	case ds == nil:
		return false, "DaemonSet deleted"
	case ds.Deleting:
		return false, "DaemonSet being deleted"
	case node == nil:
		return false, "node deleted"
	case ds.Pod.NodeName != "" && ds.Pod.NodeName != node.Name:
		return false, fmt.Sprintf("the DaemonSet's pods go to node %s alone", ds.Pod.NodeName)
	}
	if !labels.SelectorFromSet(ds.Pod.NodeSelector).Matches(labels.Set(node.Labels)) {
		return false, "the node no longer matches the DaemonSet's nodeSelector"
	}
	if a := ds.Pod.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil &&
		!nodeSelectorMatches(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution, node) {
		return false, "the node no longer matches the DaemonSet's required node affinity"
	}
	tolerations := daemonPodTolerations(ds.Pod)
	for _, taint := range node.Spec.Taints {
		if taint.Effect != corev1.TaintEffectNoSchedule && taint.Effect != corev1.TaintEffectNoExecute || passingTaints.Has(taint.Key) {
			continue
		}
		if !slices.ContainsFunc(tolerations, func(t corev1.Toleration) bool {
			// Lt and Gt tolerations are alpha (TaintTolerationComparisonOperators,
			// off by default): the controller does not match them either.
			return t.ToleratesTaint(logr.Discard(), &taint, false)
		}) {
			return false, fmt.Sprintf("the node has the taint %s, which the DaemonSet does not tolerate", taint.ToString())
		}
	}
	return true, ""
}

// passingTaints come and go with the node's health, whatever the effect.
var passingTaints = sets.New(corev1.TaintNodeNotReady, corev1.TaintNodeUnreachable, corev1.TaintNodeNetworkUnavailable)

// daemonPodTolerations are the template's tolerations and those the
// DaemonSet controller adds to every daemon pod
// (k8s.io/kubernetes/pkg/controller/daemon/util.AddOrUpdateDaemonPodTolerations).
func daemonPodTolerations(spec corev1.PodSpec) []corev1.Toleration {
	out := slices.Clone(spec.Tolerations)
	for _, t := range []struct {
		key    string
		effect corev1.TaintEffect
	}{
		{corev1.TaintNodeNotReady, corev1.TaintEffectNoExecute},
		{corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute},
		{corev1.TaintNodeDiskPressure, corev1.TaintEffectNoSchedule},
		{corev1.TaintNodeMemoryPressure, corev1.TaintEffectNoSchedule},
		{corev1.TaintNodePIDPressure, corev1.TaintEffectNoSchedule},
		{corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule},
	} {
		out = append(out, corev1.Toleration{Key: t.key, Operator: corev1.TolerationOpExists, Effect: t.effect})
	}
	if spec.HostNetwork {
		out = append(out, corev1.Toleration{Key: corev1.TaintNodeNetworkUnavailable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
	}
	return out
}

// nodeSelectorMatches is required node affinity as the scheduler and the
// DaemonSet controller read it (k8s.io/component-helpers'
// nodeaffinity.NodeSelector): the terms are ORed, an empty term is ignored
// (so only empty terms match nothing), and a term that does not parse
// matches nothing.
func nodeSelectorMatches(ns *corev1.NodeSelector, node *corev1.Node) bool {
	for _, term := range ns.NodeSelectorTerms {
		if len(term.MatchExpressions) == 0 && len(term.MatchFields) == 0 {
			continue
		}
		if termMatches(term, node) {
			return true
		}
	}
	return false
}

var nodeSelectorOperators = map[corev1.NodeSelectorOperator]selection.Operator{
	corev1.NodeSelectorOpIn:           selection.In,
	corev1.NodeSelectorOpNotIn:        selection.NotIn,
	corev1.NodeSelectorOpExists:       selection.Exists,
	corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
	corev1.NodeSelectorOpGt:           selection.GreaterThan,
	corev1.NodeSelectorOpLt:           selection.LessThan,
}

func termMatches(term corev1.NodeSelectorTerm, node *corev1.Node) bool {
	for _, expr := range term.MatchExpressions {
		op, ok := nodeSelectorOperators[expr.Operator]
		if !ok {
			return false
		}
		r, err := labels.NewRequirement(expr.Key, op, expr.Values)
		if err != nil || !r.Matches(labels.Set(node.Labels)) {
			return false
		}
	}
	// Fields: metadata.name alone, In or NotIn with exactly one value.
	for _, expr := range term.MatchFields {
		if len(expr.Values) != 1 {
			return false
		}
		value := ""
		if expr.Key == "metadata.name" {
			value = node.Name
		}
		switch expr.Operator {
		case corev1.NodeSelectorOpIn:
			if value != expr.Values[0] {
				return false
			}
		case corev1.NodeSelectorOpNotIn:
			if value == expr.Values[0] {
				return false
			}
		default:
			return false
		}
	}
	return true
}
