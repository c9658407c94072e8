package e2e_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/pkg/policy"

	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// The uninstall runs last: its file sorts after every other test's.

// TestUninstall runs the uninstall commands of docs/install.md: the webhook
// goes without taking the agent (they share the namespace), then the agent
// gives every GPU it capped its limit back before it exits.
func TestUninstall(t *testing.T) {
	ctx := t.Context()
	pod := sandbox.WorkerPod("uninstall-probe", "default", "probe", 1, "300")
	if _, err := sb.Kubectl(ctx, pod, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, 2*time.Minute, "uninstall-probe's GPU capped", func() (bool, string) {
		idx := sb.GPUsOf("default", "uninstall-probe")
		gpus, err := sb.GPUs()
		if err != nil || len(idx) != 1 {
			return false, fmt.Sprintf("GPUs %v: %v", idx, err)
		}
		return gpus[idx[0]].Limit == 300_000, fmt.Sprintf("GPU %d at %d mW", idx[0], gpus[idx[0]].Limit)
	})

	// The webhook: every file but the namespace.
	files, err := filepath.Glob(filepath.Join(testdeploy.WebhookDir(), "[1-9]*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("webhook manifests: %v %v", files, err)
	}
	args := []string{"delete", "--ignore-not-found"}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	if _, err := sb.Kubectl(ctx, "", args...); err != nil {
		t.Fatal(err)
	}
	if err := sb.Webhook.Stop(time.Minute); err != nil { // as the kubelet would
		t.Fatal(err)
	}
	if out, err := sb.Kubectl(ctx, "", "get", "namespace/dynamo-system", "daemonset/power-agent", "-n", "dynamo-system"); err != nil {
		t.Fatalf("the webhook's uninstall took the agent with it: %v\n%s", err, out)
	}
	if _, err := sb.Kubectl(ctx, sandbox.WorkerPod("unchecked", "default", "probe", 1, "900"), "apply", "-f", "-"); err != nil {
		t.Errorf("with the webhook uninstalled, GPU pods are admitted unchecked: %v", err)
	}
	// While the webhook is away a pod's author can type the stamp too; the
	// agent, which verifies the webhook's signature, caps nothing for it.
	forged := strings.Replace(sandbox.WorkerPod("forged-stamp", "default", "probe", 1, "300"),
		"  annotations:\n", "  annotations:\n    "+policy.AnnotationPowerLimitValidated+": \"300\"\n", 1)
	if _, err := sb.Kubectl(ctx, forged, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	poll.Eventually(t, 2*time.Minute, "PowerLimitNotValidated on forged-stamp", func() (bool, string) {
		var events corev1.EventList
		if err := sb.Client.List(ctx, &events, client.InNamespace("default")); err != nil {
			return false, err.Error()
		}
		for _, e := range events.Items {
			if e.InvolvedObject.Name == "forged-stamp" && e.Reason == "PowerLimitNotValidated" && strings.Contains(e.Message, "no valid signature") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events in default", len(events.Items))
	})
	if idx := sb.GPUsOf("default", "forged-stamp"); len(idx) == 1 {
		gpus, err := sb.GPUs()
		if err != nil {
			t.Fatal(err)
		}
		if g := gpus[idx[0]]; g.Limit != g.Default {
			t.Errorf("GPU %d of the pod with a typed stamp is at %d mW; want its default %d mW", g.Index, g.Limit, g.Default)
		}
	} else {
		t.Errorf("forged-stamp holds GPUs %v; want one", idx)
	}

	// The agent: the kubelet stops its pod once the DaemonSet is gone.
	if _, err := sb.Kubectl(ctx, "", "delete", "-f", testdeploy.AgentFile()); err != nil {
		t.Fatal(err)
	}
	if err := sb.Agent.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}
	gpus, err := sb.GPUs()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gpus {
		if g.Limit != g.Default {
			t.Errorf("GPU %d left at %d mW after the agent's uninstall; want its default %d mW", g.Index, g.Limit, g.Default)
		}
	}
	// No namespace controller runs here to finish the deletion: do not wait for it.
	if _, err := sb.Kubectl(ctx, "", "delete", "namespace", "dynamo-system", "--wait=false"); err != nil {
		t.Error(err)
	}
}
