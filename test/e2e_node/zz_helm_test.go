package e2enode_test

// This file's name puts it last: Go runs a package's tests file by file in
// name order, and its test removes the kubectl install every other test
// uses (the chart's object names are fixed: one install per cluster). A
// test that runs after it anyway (-run, -shuffle) installs with kubectl
// again through install.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// TestHelmInstallCapsThenUninstallRestores: the chart
// (deploy/helm/gpu-power), installed with the helm CLI `make helm` builds
// from its Go module instead of kubectl, is a working system on the real
// node: the webhook's replicas and the agent pod run Ready from the images
// the node imported (the chart's defaults), the webhook takes only the API
// server, a GPU pod is admitted with the stamp and its GPU capped; `helm
// uninstall` then gives every GPU its default back while the pod still
// runs, and leaves no object of the release, the webhook configurations
// included.
//
// The values are realnode.HelmValues: the changes the kubectl install
// makes to the shipped manifests, made through the chart (the API server's
// client CA as webhook.clientAuth.caBundle, --fake-nvml as
// agent.extraArgs).
func TestHelmInstallCapsThenUninstallRestores(t *testing.T) {
	root := envtestenv.Root()
	helmBin := realnode.HelmBinary(root)
	if _, err := os.Stat(helmBin); err != nil {
		t.Fatalf("no helm CLI at %s: run `make helm` (make test-cluster builds it): %v", helmBin, err)
	}
	home := t.TempDir()
	helm := func(args ...string) string {
		t.Helper()
		out, err := cluster.Helm(t.Context(), helmBin, home, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	t.Logf("helm %s", strings.TrimSpace(helm("version", "--short")))
	const ns = "dynamo-system"
	step := time.Now()
	elapsed := func() time.Duration {
		d := time.Since(step).Round(100 * time.Millisecond)
		step = time.Now()
		return d
	}

	removeKubectlInstall(t)
	t.Logf("kubectl install removed, every GPU at its default: %s", elapsed())

	ca, err := os.ReadFile(realnode.APIServerAuth().CA)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := realnode.HelmValues(ca)
	if err != nil {
		t.Fatal(err)
	}
	valuesFile := filepath.Join(home, "values.yaml")
	if err := os.WriteFile(valuesFile, vals, 0o600); err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() { // a failed run leaves no release behind (and restores the GPUs)
		if !released {
			_, _ = cluster.Helm(context.Background(), helmBin, home, "uninstall", realnode.HelmRelease, "-n", ns, "--ignore-not-found", "--wait", "--timeout", "5m")
		}
	})
	helm("install", realnode.HelmRelease, filepath.Join(root, realnode.HelmChart), "-n", ns, "--create-namespace",
		"-f", valuesFile, "--wait", "--timeout", "5m")
	for _, what := range []string{"deployment/power-webhook", "daemonset/power-agent"} {
		kubectl(t, "", "rollout", "status", "-n", ns, what, "--timeout=5m")
	}
	allReady(t)
	t.Logf("helm install --wait, both Ready: %s", elapsed())
	manifest := helm("get", "manifest", realnode.HelmRelease, "-n", ns)

	// What runs is the chart's, with the images the node imported.
	webhookRef, _ := realnode.ShippedImage(filepath.Join(testdeploy.WebhookDir(), "30-deployment.yaml"))
	agentRef, _ := realnode.ShippedImage(testdeploy.AgentFile())
	ds, err := cluster.Client.AppsV1().DaemonSets(ns).Get(t.Context(), "power-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if r := ds.Annotations["meta.helm.sh/release-name"]; r != realnode.HelmRelease {
		t.Errorf("the agent DaemonSet's release is %q, want %s", r, realnode.HelmRelease)
	}
	pods, err := cluster.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		c := p.Spec.Containers[0]
		switch p.Labels["app"] {
		case "power-webhook":
			if c.Image != webhookRef {
				t.Errorf("webhook pod %s runs %s, want %s", p.Name, c.Image, webhookRef)
			}
		case "power-agent":
			if c.Image != agentRef || !slices.Contains(c.Args, realnode.FakeNVMLArg) {
				t.Errorf("agent pod %s runs %s %v, want %s with %s", p.Name, c.Image, c.Args, agentRef, realnode.FakeNVMLArg)
			}
		}
	}
	webhookTakesOnlyTheAPIServer(t)
	eventually(t, "cainjector put the serving CA into both webhook configurations", func() (bool, string) {
		return caInjected(t)
	})

	pod := createPod(t, gpuPod("helm", "315"))
	t.Cleanup(func() { deletePod(t, pod) })
	if got := pod.Annotations[policy.AnnotationPowerLimitValidated]; got != "315" {
		t.Fatalf("the webhook stamped %q, want 315", got)
	}
	var uuid string
	eventually(t, "capped at 315 W", func() (bool, string) {
		var ok bool
		uuid, ok = gpuAt(t, 315)
		return ok, fmt.Sprint(limits(t))
	})
	t.Logf("GPU pod admitted with the stamp, GPU %s capped at 315 W: %s", uuid, elapsed())

	helm("uninstall", realnode.HelmRelease, "-n", ns, "--wait", "--timeout", "5m")
	released = true
	eventually(t, "the agent pod is gone", func() (bool, string) {
		pods, err := cluster.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-agent"})
		return err == nil && len(pods.Items) == 0, fmt.Sprintf("%v, %d agent pods", err, len(pods.Items))
	})
	for _, g := range gpus(t) {
		if g.Limit != g.Default {
			t.Errorf("GPU %s at %d mW once the agent pod is gone, want its default %d mW", g.UUID, g.Limit, g.Default)
		}
	}
	if p := getPod(t, pod.Name); p.DeletionTimestamp != nil {
		t.Errorf("the GPU pod is being deleted: the GPU must be restored by the uninstall, not by the pod going")
	}
	t.Logf("helm uninstall: every GPU at its default while the pod runs: %s", elapsed())

	eventually(t, "no object of the release left, nor any pod in "+ns, func() (bool, string) {
		left, err := cluster.Kubectl(t.Context(), manifest, "get", "-f", "-", "--ignore-not-found", "-o", "name")
		if err != nil {
			return false, err.Error()
		}
		pods, err := cluster.Client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err.Error()
		}
		return strings.TrimSpace(left) == "" && len(pods.Items) == 0, fmt.Sprintf("left: %s; %d pods", strings.Fields(left), len(pods.Items))
	})
	for _, get := range []func() error{
		func() error {
			_, err := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "power-webhook", metav1.GetOptions{})
			return err
		},
		func() error {
			_, err := cluster.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(t.Context(), "power-webhook", metav1.GetOptions{})
			return err
		},
	} {
		if err := get(); !apierrors.IsNotFound(err) {
			t.Errorf("a webhook configuration after helm uninstall: %v", err)
		}
	}
	if out := helm("list", "-n", ns, "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("helm list after uninstall: %s", out)
	}
	left, _ := cluster.Kubectl(t.Context(), "", "get", "secrets,configmaps,leases", "-n", ns, "-o", "name")
	t.Logf("left in %s, not the release's (cert-manager's Secrets, the webhook's leader lease): %s", ns, strings.Fields(left))
}

// removeKubectlInstall deletes what install applied, the agent first (its
// pod restores every GPU as it stops, as in
// TestUninstallRestoresThenKubeletRestart), then deploy/webhook/ with the
// client CA's Secret, waiting until all of it, the namespace included, is
// gone.
func removeKubectlInstall(t *testing.T) {
	t.Helper()
	agent, err := realnode.AgentManifest(testdeploy.AgentFile())
	if err != nil {
		t.Fatal(err)
	}
	uninstalled()
	kubectl(t, string(agent), "delete", "-f", "-", "--ignore-not-found", "--wait=false")
	eventually(t, "the kubectl-installed agent pod is gone", func() (bool, string) {
		pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-agent"})
		return err == nil && len(pods.Items) == 0, fmt.Sprintf("%v, %d agent pods", err, len(pods.Items))
	})
	for _, g := range gpus(t) {
		if g.Limit != g.Default {
			t.Fatalf("GPU %s at %d mW once the kubectl-installed agent is gone, want its default %d mW", g.UUID, g.Limit, g.Default)
		}
	}
	ca, err := os.ReadFile(realnode.APIServerAuth().CA)
	if err != nil {
		t.Fatal(err)
	}
	webhook, err := realnode.WebhookManifests(testdeploy.WebhookDir(), ca)
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, string(webhook), "delete", "-f", "-", "--ignore-not-found", "--timeout=5m")
}

// caInjected: every webhook of both configurations carries a CA bundle.
func caInjected(t *testing.T) (bool, string) {
	t.Helper()
	m, err := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(t.Context(), "power-webhook", metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	v, err := cluster.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(t.Context(), "power-webhook", metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	for _, w := range m.Webhooks {
		if len(w.ClientConfig.CABundle) == 0 {
			return false, w.Name + " has no caBundle"
		}
	}
	for _, w := range v.Webhooks {
		if len(w.ClientConfig.CABundle) == 0 {
			return false, w.Name + " has no caBundle"
		}
	}
	return true, ""
}
