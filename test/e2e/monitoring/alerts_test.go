package monitoring_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/prometheustest"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
)

// fireWithin bounds how long an alert may take to fire once its condition
// holds: a scrape and an evaluation a second, the shortened `for`, and the
// agent's 15 s cycle where the agent must act first.
const fireWithin = 90 * time.Second

// TestAlertsFire drives the condition of each alert on the running system and
// waits for Prometheus to report it firing, with the labels and runbook the
// shipped rule gives it.
func TestAlertsFire(t *testing.T) {
	t.Run("budget nearly full, then over its total", func(t *testing.T) {
		ns := namespace(t, "mon-budget", map[string]string{"team": "mon-budget"})
		budget := &powerv1alpha1.GPUPowerBudget{
			ObjectMeta: metav1.ObjectMeta{Name: "mon-budget"},
			Spec: powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 1000,
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "mon-budget"}}},
		}
		create(t, budget)
		create(t, gpuPod("fill", ns, 2, "475")) // 950 W of 1000 W: 95%
		a := firing(t, "GPUPowerBudgetNearlyFull", map[string]string{"budget": "mon-budget", "severity": "warning"})
		if a.Annotations["runbook_url"] == "" || a.Annotations["summary"] != "GPU power budget mon-budget is over 90% committed." {
			t.Errorf("annotations %v", a.Annotations)
		}
		// The total lowered under what live pods commit.
		if err := sb.Client.Patch(t.Context(), budget, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"totalWatts":900}}`))); err != nil {
			t.Fatal(err)
		}
		firing(t, "GPUPowerBudgetOverCommitted", map[string]string{"budget": "mon-budget", "severity": "critical"})
	})

	t.Run("cap writes fail", func(t *testing.T) {
		ns := namespace(t, "mon-writes", nil)
		gpus := freeGPUs(t)
		// Every GPU refuses writes until the test ends: whichever the kubelet
		// gives the pod, the agent cannot cap it.
		setFaults(t, gpus, true)
		create(t, gpuPod("refused", ns, 1, "400"))
		firing(t, "GPUPowerCapWriteFailures", map[string]string{"severity": "warning"})
	})

	t.Run("another writer changes a limit", func(t *testing.T) {
		ns := namespace(t, "mon-drift", nil)
		pod := gpuPod("drifting", ns, 1, "350")
		create(t, pod)
		uuid := cappedAt(t, ns, pod.Name, 350)
		repairs := fmt.Sprintf(`dynamo_power_agent_drift_repairs_total{gpu=%q}`, uuid)
		before := value(t, repairs)
		fake := fakeNVML(t)
		if err := fake.SetLimitExternally(uuid, 600_000); err != nil { // nvidia-smi -pl 600
			t.Fatal(err)
		}
		// The GPU may have drifted before (an earlier test's restore): this
		// repair is the one the alert must see.
		poll.Eventually(t, fireWithin, "the agent repairs the limit", func() (bool, string) {
			now := value(t, repairs)
			return now > before, fmt.Sprintf("%s = %v, was %v", repairs, now, before)
		})
		firing(t, "GPUPowerLimitDrift", map[string]string{"gpu": uuid})
	})

	t.Run("pods sharing a GPU ask different limits", func(t *testing.T) {
		ns := namespace(t, "mon-shared", nil)
		for name, limit := range map[string]string{"share-a": "300", "share-b": "400"} {
			p := testpod.MakePod(name, ns).Resource(0, policy.ResourceGPUShared, 1).Limit(limit).NodeName(sandbox.NodeName).Obj()
			create(t, p)
		}
		gpus, err := sb.GPUs()
		if err != nil {
			t.Fatal(err)
		}
		board := gpus[len(gpus)-1].UUID // the sandbox's time-sliced board
		firing(t, "GPUPowerSharedGPUConflict", map[string]string{"gpu": board})
	})

	t.Run("a limit the webhook never validated", func(t *testing.T) {
		// kube-system is skipped by both webhook configurations: the pod is
		// stored with its annotation and no stamp.
		pod := gpuPod("unvalidated", "kube-system", 1, "300")
		create(t, pod)
		firing(t, "GPUPowerLimitNotValidated", nil)
	})

	t.Run("admissions fail", func(t *testing.T) {
		// A review the webhook cannot read a pod from is an error, not a
		// denial; sent with the API server's own client certificate.
		c := apiServerClient(t)
		review := []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"mon-1",` +
			`"kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","namespace":"default","object":{"spec":5}}}`)
		for range 5 {
			resp, err := c.Post(sb.WebhookURL+webhook.ValidatePath, "application/json", bytes.NewReader(review))
			if err != nil {
				t.Fatal(err)
			}
			_ = resp.Body.Close()
		}
		firing(t, "GPUPowerWebhookAdmissionErrors", map[string]string{"webhook": "validate"})
	})

	t.Run("the agent stops", func(t *testing.T) {
		waitForSeries(t, `up{job="power-agent"} == 1`) // enforcing until now
		if err := sb.Agent.Stop(time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restart(t, sb.Agent) })
		firing(t, "GPUPowerAgentNotEnforcing", map[string]string{"job": "power-agent"})
	})

	t.Run("no webhook replica", func(t *testing.T) {
		// Ready until now: the alert fires for the stop, not from the start.
		waitForSeries(t, `dynamo_power_webhook_ready{job="power-webhook"} == 1`)
		if err := sb.Webhook.Stop(time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { restart(t, sb.Webhook) })
		firing(t, "GPUPowerWebhookDown", map[string]string{"severity": "critical"})
		// The API server's side: each GPU pod create fails calling the
		// webhook. Creates go on until the alert fires (a counter's first
		// sample shows no increase).
		ns := namespace(t, "mon-unreachable", nil)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(500 * time.Millisecond):
				}
				if err := sb.Client.Create(context.Background(), gpuPod(fmt.Sprintf("refused-%d", i), ns, 1, "300")); err == nil {
					t.Errorf("a GPU pod was admitted with no webhook replica")
				}
			}
		}()
		defer func() { close(stop); <-done }()
		firing(t, "GPUPowerWebhookCallsFailing", map[string]string{"name": "mutate.power.dynamo.nvidia.com"})
	})
}

// TestDashboardQueries runs every query of the shipped dashboard against the
// Prometheus that scraped the scenario above: each must parse and return
// series. A capped pod holds a GPU whose cap binds, so the per-GPU and
// per-pod panels have something to show.
func TestDashboardQueries(t *testing.T) {
	ns := namespace(t, "mon-dashboard", map[string]string{"team": "mon-dashboard"})
	create(t, &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "mon-dashboard"},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{TotalWatts: 500,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "mon-dashboard"}}},
	})
	pod := gpuPod("shown", ns, 1, "450")
	create(t, pod)
	// One more does not fit: the denials panel has a budget to show.
	if err := sb.Client.Create(t.Context(), gpuPod("denied", ns, 1, "450")); err == nil {
		t.Fatal("a pod over the budget was admitted")
	}
	uuid := cappedAt(t, ns, pod.Name, 450)
	fake := fakeNVML(t)
	for range 3 {
		if err := fake.AddPowerCapped(uuid, 2*time.Second); err != nil {
			t.Fatal(err)
		}
		waitForSeries(t, fmt.Sprintf(`dynamo_power_agent_gpu_power_capped_seconds_total{gpu=%q}`, uuid))
	}
	for _, expr := range dashboardQueries(t) {
		waitForSeries(t, expr)
	}
	waitForSeries(t, `dynamo_power_webhook_denials_total{webhook="validate", reason="budget"} > 0`)
	// Draw is joined to the pod holding the GPU, not to the agent's pod.
	byPod := waitForSeries(t, `sum by (namespace, pod) (dynamo_power_agent_gpu_pod_info * on (instance, gpu) group_left dynamo_power_agent_gpu_draw_watts)`)
	if !slices.ContainsFunc(byPod, func(s prometheustest.Sample) bool { return s.Metric["namespace"] == ns && s.Metric["pod"] == pod.Name }) {
		t.Errorf("draw by pod does not name %s/%s: %v", ns, pod.Name, byPod)
	}
}

// value is the single series of expr's value as Prometheus has it now.
func value(t *testing.T, expr string) float64 {
	t.Helper()
	s := waitForSeries(t, expr)
	v, err := strconv.ParseFloat(s[0].Value, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func firing(t *testing.T, alert string, labels map[string]string) prometheustest.Alert {
	t.Helper()
	a, err := prom.WaitForAlert(t.Context(), alert, labels, fireWithin)
	if err != nil {
		t.Fatalf("%v\nPrometheus log:\n%s", err, prom.LogTail(10))
	}
	if a.Annotations["runbook_url"] == "" || a.Annotations["description"] == "" {
		t.Errorf("%s fired without a runbook or description: %v", alert, a.Annotations)
	}
	return a
}

func namespace(t *testing.T, name string, labels map[string]string) string {
	t.Helper()
	create(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})
	return name
}

// create creates obj and deletes it when the test ends.
func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := sb.Client.Create(t.Context(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
	t.Cleanup(func() {
		_ = sb.Client.Delete(context.Background(), obj, client.GracePeriodSeconds(0))
	})
}

func gpuPod(name, ns string, gpus int64, limit string) *corev1.Pod {
	return testpod.MakePod(name, ns).GPU(gpus).Limit(limit).NodeName(sandbox.NodeName).Obj()
}

func fakeNVML(t *testing.T) *nvmlfake.Fake {
	t.Helper()
	f, err := nvmlfake.NewFromFile(sb.NVMLState)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func freeGPUs(t *testing.T) []string {
	t.Helper()
	gpus, err := sb.GPUs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, g := range gpus {
		out = append(out, g.UUID)
	}
	return out
}

// setFaults makes the simulated GPUs refuse power-limit writes, or accept
// them again; refusals end with the test.
func setFaults(t *testing.T, uuids []string, refuse bool) {
	t.Helper()
	f := fakeNVML(t)
	for _, u := range uuids {
		if err := f.Update(u, func(g *nvmlfake.GPU) { g.RefuseLimitWrites = refuse }); err != nil {
			t.Fatal(err)
		}
	}
	if refuse {
		t.Cleanup(func() { setFaults(t, uuids, false) })
	}
}

// cappedAt waits until the agent capped the pod's GPU at watts and returns
// the GPU's UUID.
func cappedAt(t *testing.T, ns, name string, watts int64) string {
	t.Helper()
	var uuid string
	poll.Eventually(t, fireWithin, fmt.Sprintf("%s/%s capped at %d W", ns, name, watts), func() (bool, string) {
		idx := sb.GPUsOf(ns, name)
		if len(idx) != 1 {
			return false, fmt.Sprintf("GPUs of the pod: %v", idx)
		}
		gpus, err := sb.GPUs()
		if err != nil {
			return false, err.Error()
		}
		g := gpus[idx[0]]
		uuid = g.UUID
		return g.Limit == nvmlctl.Milliwatts(watts*1000), fmt.Sprintf("GPU %d at %d mW", idx[0], g.Limit)
	})
	return uuid
}

func restart(t *testing.T, p *sandbox.Process) {
	if err := p.Start(context.Background()); err != nil {
		t.Errorf("restart %s: %v", p.Name, err)
	}
}

// apiServerClient presents the API server's client certificate to the
// webhook, as the API server does.
func apiServerClient(t *testing.T) *http.Client {
	t.Helper()
	files := sb.APIServerAuth
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	serving, err := os.ReadFile(sb.CertDir + "/ca.crt")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(serving)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12,
	}}}
}
