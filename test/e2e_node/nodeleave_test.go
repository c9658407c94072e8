package e2enode_test

import (
	"context"
	"fmt"
	"testing"

	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TestNodeLeavingTheDaemonSetRestores: the node loses nvidia.com/gpu.present
// (GPU Feature Discovery drops it when the GPUs or their driver go), so the
// DaemonSet controller deletes the agent pod while the DaemonSet stays. No
// successor will run there: the agent gives every GPU its default back as
// it stops. Labelled again, the node gets an agent again, which caps again.
func TestNodeLeavingTheDaemonSetRestores(t *testing.T) {
	install(t)
	pod := createPod(t, gpuPod("left-behind", "310"))
	t.Cleanup(func() { deletePod(t, pod) })
	var uuid string
	eventually(t, "capped at 310 W", func() (bool, string) {
		var ok bool
		uuid, ok = gpuAt(t, 310)
		return ok, fmt.Sprint(limits(t))
	})
	old, ok := agentPod(t)
	if !ok {
		t.Fatal("no single agent pod")
	}
	const label = "nvidia.com/gpu.present"
	relabelled := false
	t.Cleanup(func() { // on a failure, later tests still find the node labelled
		if !relabelled {
			_, _ = cluster.Kubectl(context.Background(), "", "label", "node", "gpu-node-0", "--overwrite", label+"=true")
		}
	})
	kubectl(t, "", "label", "node", "gpu-node-0", label+"-")
	eventually(t, "the agent pod is gone", func() (bool, string) {
		pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-agent"})
		return err == nil && len(pods.Items) == 0, fmt.Sprintf("%v, %d agent pods", err, len(pods.Items))
	})
	for _, g := range gpus(t) {
		if g.Limit != g.Default {
			t.Errorf("GPU %s at %d mW once the agent pod is gone, want its default %d mW", g.UUID, g.Limit, g.Default)
		}
	}

	kubectl(t, "", "label", "node", "gpu-node-0", "--overwrite", label+"=true")
	relabelled = true
	eventually(t, "a new agent pod Ready", func() (bool, string) {
		p, ok := agentPod(t)
		return ok && p.UID != old.UID && podReady(p), "no new agent pod Ready"
	})
	eventually(t, "capped again by the new agent", func() (bool, string) {
		return limits(t)[uuid] == 310, fmt.Sprint(limits(t))
	})
	allReady(t) // the next test starts from a settled node
}

// TestStampWhereTheWebhookNeverLooks: a GPU pod in kube-system, which the
// webhook does not intercept, with a limit and a stamp typed by hand: the
// API server admits it as it is, the agent caps nothing and tells the pod.
func TestStampWhereTheWebhookNeverLooks(t *testing.T) {
	install(t)
	atDefault := func() (bool, string) {
		for _, g := range gpus(t) {
			if g.Limit != g.Default {
				return false, fmt.Sprint(limits(t))
			}
		}
		return true, ""
	}
	eventually(t, "every GPU at its default (the pods of earlier tests gone)", atDefault)
	p := gpuPodIn(policy.SkippedNamespaces[0], "typed-by-hand", "290")
	p.Annotations[policy.AnnotationPowerLimitValidated] = "290"
	pod := createPod(t, p)
	t.Cleanup(func() { deletePod(t, pod) })
	eventually(t, "a "+agent.ReasonNotValidated+" Warning on the pod", func() (bool, string) {
		list, err := cluster.Client.EventsV1().Events(pod.Namespace).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.UID == pod.UID && e.Reason == agent.ReasonNotValidated && e.Type == "Warning" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events in %s: %v", len(list.Items), pod.Namespace, reasons(list.Items))
	})
	if _, capped := gpuAt(t, 290); capped {
		t.Errorf("a stamp the webhook never saw capped a GPU: %v", limits(t))
	}
	if ok, l := atDefault(); !ok {
		t.Errorf("a GPU left its default: %s", l)
	}
}

func reasons(evs []eventsv1.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Reason)
	}
	return out
}
