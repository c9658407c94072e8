// Package e2e_test runs the whole system in the sandbox (test/sandbox): both
// manifest folders applied unchanged with kubectl to a real API server where
// cert-manager's own controllers and cainjector run, the webhook binary
// serving the certificate cert-manager issued, the agent binary on simulated
// H100s. It checks what an operator checks after `kubectl apply`, then plays
// the planner scenario of `make demo`, step by step.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/test/envtestenv"
	"github.com/dynamo-power/gpu-power/test/sandbox"
	"github.com/dynamo-power/gpu-power/test/testdeploy"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) { envtestenv.Main(m, "e2e", setup) }

func setup(m *testing.M) (code int, err error) {
	dir, err := os.MkdirTemp("", "power-e2e-")
	if err != nil {
		return 0, err
	}
	var progress bytes.Buffer
	if sb, err = sandbox.Start(context.Background(), sandbox.Options{Dir: dir, Progress: &progress}); err != nil {
		return 0, fmt.Errorf("%w\n%s(files kept in %s)", err, progress.String(), dir)
	}
	code = m.Run()
	if err := sb.Stop(); err != nil {
		return code, err
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: logs of both binaries and cert-manager kept in %s\n", dir)
		return code, nil
	}
	return code, os.RemoveAll(dir)
}

// TestInstall checks what `kubectl apply` of both folders produced:
// cert-manager issued the serving certificate from the CA chain (a leaf, not
// self-signed) for the Service's name, and the shipped example budget applies.
func TestInstall(t *testing.T) {
	var secret corev1.Secret
	if err := sb.Client.Get(t.Context(), types.NamespacedName{Namespace: sandbox.Namespace, Name: sandbox.SecretName}, &secret); err != nil {
		t.Fatal(err)
	}
	leaf, err := sandbox.ParseCertificate(secret.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "power-webhook.dynamo-system.svc"}); err != nil {
		t.Errorf("the serving certificate does not verify against the CA for the Service's name: %v", err)
	}
	if leaf.IsCA || bytes.Equal(leaf.RawIssuer, leaf.RawSubject) {
		t.Error("the serving certificate must be a leaf issued by the CA, not self-signed")
	}
	served, err := sb.ServedCertificate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !served.Equal(leaf) {
		t.Errorf("the webhook serves serial %s; the Secret holds %s", served.SerialNumber, leaf.SerialNumber)
	}

	example, err := testdeploy.ExampleBudget()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sb.Kubectl(t.Context(), string(example), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "gpupowerbudget.power.dynamo.nvidia.com/example") {
		t.Errorf("kubectl apply of the example budget: %s", out)
	}
	out, err := sb.Kubectl(t.Context(), "", "get", "gpupowerbudgets", "example")
	if err != nil || !strings.Contains(out, "TOTAL") {
		t.Errorf("kubectl get gpupowerbudgets example: %v\n%s", err, out)
	}
	if _, err := sb.Kubectl(t.Context(), "", "delete", "gpupowerbudgets", "example"); err != nil {
		t.Error(err)
	}
}

// TestPlannerScenario plays `make demo`'s scenario, one subtest per step;
// a step builds on the ones before, so the first failure ends the test.
func TestPlannerScenario(t *testing.T) {
	steps := (&sandbox.Planner{S: sb}).Steps()
	for i, st := range steps {
		ok := t.Run(st.Title, func(t *testing.T) {
			p := &sandbox.Planner{S: sb, Out: logWriter{t}}
			if err := p.Steps()[i].Run(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := sb.Err(); err != nil {
				t.Fatal(err)
			}
		})
		if !ok {
			t.Fatalf("step %d failed; the later steps depend on it", i+1)
		}
	}
}

// logWriter sends the planner's narrative to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestUninstall runs the uninstall commands of docs/install.md: the webhook
// goes without taking the agent (they share the namespace), then the agent
// gives every GPU it capped its limit back before it exits.
func TestUninstall(t *testing.T) {
	ctx := t.Context()
	pod := sandbox.WorkerPod("uninstall-probe", "default", "probe", 1, "300")
	if _, err := sb.Kubectl(ctx, pod, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	envtestenv.Eventually(t, 2*time.Minute, "uninstall-probe's GPU capped", func() (bool, string) {
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
