package scale_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// floorLabel marks the pods of a floor run: only they reach the floor
// webhook (its configurations' objectSelector), and kube-system keeps them
// from the power webhook.
const floorLabel = "power.bench/floor"

// floorWebhook is test/scale/floorwebhook running as its own process, behind
// a mutating and a validating configuration like the power webhook's: the
// cost of serving two AdmissionReviews a pod and nothing else.
type floorWebhook struct {
	pid       int
	countAddr string
}

// startFloor builds and starts the floor webhook with the sandbox's serving
// certificate and the environment the power webhook's Deployment gives it
// (GOMAXPROCS), and registers it for pods labelled floorLabel.
func startFloor(b *bench, dir string) *floorWebhook {
	b.t.Helper()
	bin := filepath.Join(dir, "floorwebhook")
	build := exec.CommandContext(b.t.Context(), "go", "build", "-o", bin, "./test/scale/floorwebhook")
	build.Dir = envtestenv.Root()
	if out, err := build.CombinedOutput(); err != nil {
		b.t.Fatalf("build the floor webhook: %v\n%s", err, out)
	}
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		b.t.Fatal(err)
	}
	countAddr, err := envtestenv.FreeAddr()
	if err != nil {
		b.t.Fatal(err)
	}
	env, err := testdeploy.WebhookResourceEnv()
	if err != nil {
		b.t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "floorwebhook.log"))
	if err != nil {
		b.t.Fatal(err)
	}
	cmd := exec.Command(bin, "--address", addr, "--count-address", countAddr,
		"--cert", filepath.Join(b.sb.CertDir, "tls.crt"), "--key", filepath.Join(b.sb.CertDir, "tls.key"))
	cmd.Env, cmd.Stdout, cmd.Stderr = append(os.Environ(), env...), log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = log.Close()
	})
	f := &floorWebhook{pid: cmd.Process.Pid, countAddr: countAddr}
	b.poll("the floor webhook answers", 100*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string, error) {
		_, err := f.count(ctx)
		return err == nil, fmt.Sprint(err), nil
	})

	ctx := b.t.Context()
	ours, err := b.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "power-webhook", metav1.GetOptions{})
	if err != nil {
		b.t.Fatal(err)
	}
	url := "https://" + addr + "/"
	client := admissionv1.WebhookClientConfig{URL: &url, CABundle: ours.Webhooks[0].ClientConfig.CABundle}
	rules := []admissionv1.RuleWithOperations{{
		Operations: []admissionv1.OperationType{admissionv1.Create},
		Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
	}}
	selector := &metav1.LabelSelector{MatchLabels: map[string]string{floorLabel: "true"}}
	none, fail, timeout := admissionv1.SideEffectClassNone, admissionv1.Fail, int32(10)
	mut := &admissionv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "bench-floor"}, Webhooks: []admissionv1.MutatingWebhook{{
		Name: "mutate.floor.bench.power", ClientConfig: client, Rules: rules, ObjectSelector: selector,
		SideEffects: &none, FailurePolicy: &fail, TimeoutSeconds: &timeout, AdmissionReviewVersions: []string{"v1"},
	}}}
	val := &admissionv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "bench-floor"}, Webhooks: []admissionv1.ValidatingWebhook{{
		Name: "validate.floor.bench.power", ClientConfig: client, Rules: rules, ObjectSelector: selector,
		SideEffects: &none, FailurePolicy: &fail, TimeoutSeconds: &timeout, AdmissionReviewVersions: []string{"v1"},
	}}}
	if _, err := b.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mut, metav1.CreateOptions{}); err != nil {
		b.t.Fatal(err)
	}
	if _, err := b.cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Create(ctx, val, metav1.CreateOptions{}); err != nil {
		b.t.Fatal(err)
	}
	// The API server calls new configurations once its informer has them:
	// dry runs of a labelled pod go through until the floor sees both calls.
	probe := gpuPod("floor-probe", "kube-system", "bench-gpu-node-0")
	probe.Labels[floorLabel] = "true"
	b.poll("the API server calls the floor webhook", 200*time.Millisecond, time.Minute, func(ctx context.Context) (bool, string, error) {
		before, err := f.count(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		if _, err := b.cs.CoreV1().Pods("kube-system").Create(ctx, probe, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
			return false, err.Error(), nil
		}
		after, err := f.count(ctx)
		return err == nil && after-before == 2, fmt.Sprintf("a dry run reached it %d times", after-before), nil
	})
	return f
}

// count is how many reviews the floor webhook has served.
func (f *floorWebhook) count(ctx context.Context) (int, error) {
	body, err := httpGet(ctx, "http://"+f.countAddr+"/count")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(body))
}

// usage is the floor webhook's CPU time so far and the reviews it served.
func (f *floorWebhook) usage(t *testing.T) (time.Duration, int) {
	t.Helper()
	cpu, err := cpuTime(f.pid)
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.count(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return cpu, n
}
