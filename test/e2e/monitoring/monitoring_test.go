// Package monitoring_test proves the monitoring bundle of deploy/monitoring/
// on a real Prometheus: the PodMonitors and the PrometheusRule apply to an
// API server holding the Prometheus Operator's CRDs (generated from their Go
// module), promtool accepts the rules and their unit tests, and a Prometheus
// scraping the sandbox's webhook and agent, with the shipped rules loaded,
// sees each alert fire when its condition is driven for real.
package monitoring_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/prometheustest"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
)

// forScale shortens every `for` of the live rules: ten minutes become six
// seconds. promtool's unit tests (testdata/rules_test.yaml) check the shipped
// durations on synthetic series.
const forScale = 0.01

var (
	sb       *sandbox.Sandbox
	prom     *prometheustest.Server
	promtool string
	root     = envtestenv.Root()
	// exactRules is the shipped rule groups as a Prometheus rule file.
	exactRules string
)

func TestMain(m *testing.M) { envtestenv.Main(m, "monitoring", setup) }

func setup(m *testing.M) (code int, err error) {
	dir, err := os.MkdirTemp("", "power-monitoring-")
	if err != nil {
		return 0, err
	}
	keep := func(err error) error { return fmt.Errorf("%w (files kept in %s)", err, dir) }
	promBin, tool, err := prometheustest.Ensure(func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		return 0, err
	}
	promtool = tool
	// Time-sliced GPUs admitted with lowest-wins: pods sharing a board can
	// ask different limits, the condition of GPUPowerSharedGPUConflict.
	if sb, err = sandbox.Start(context.Background(), sandbox.Options{Dir: dir, WebhookArgs: []string{"--time-sliced-gpus", "lowest-wins"}}); err != nil {
		return 0, keep(err)
	}
	defer func() {
		if prom != nil {
			err = joinErr(err, prom.Stop())
		}
		err = joinErr(err, sb.Stop())
		if code == 0 && err == nil {
			err = os.RemoveAll(dir)
		} else {
			fmt.Fprintf(os.Stderr, "monitoring: logs kept in %s\n", dir)
		}
	}()
	manifest := filepath.Join(root, "deploy", "monitoring", "prometheusrule.yaml")
	exact, err := prometheustest.RuleGroups(manifest, 0)
	if err != nil {
		return 0, err
	}
	exactRules = filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(exactRules, exact, 0o644); err != nil {
		return 0, err
	}
	scaled, err := prometheustest.RuleGroups(manifest, forScale)
	if err != nil {
		return 0, err
	}
	liveRules := filepath.Join(dir, "rules-live.yaml")
	if err := os.WriteFile(liveRules, scaled, 0o644); err != nil {
		return 0, err
	}
	promDir := filepath.Join(dir, "prometheus")
	if err := os.MkdirAll(promDir, 0o755); err != nil {
		return 0, err
	}
	// The labels the shipped PodMonitors give their targets on a cluster;
	// the agent's own namespace and pod labels yield to its series' (honorLabels).
	target := func(app string) map[string]string {
		return map[string]string{"namespace": sandbox.Namespace, "pod": app + "-0", "container": strings.TrimPrefix(app, "power-"),
			"endpoint": "metrics", "node": sandbox.NodeName}
	}
	apiserver, err := apiServerJob(promDir)
	if err != nil {
		return 0, err
	}
	prom, err = prometheustest.Start(context.Background(), promBin, promDir, []prometheustest.Job{
		{Name: "power-webhook", Targets: []string{sb.Webhook.MetricsAddr}, Labels: target("power-webhook")},
		{Name: "power-agent", Targets: []string{sb.Agent.MetricsAddr}, Labels: target("power-agent"), HonorLabels: true},
		apiserver,
	}, liveRules)
	if err != nil {
		return 0, keep(err)
	}
	return m.Run(), nil
}

// apiServerJob scrapes the API server's own /metrics, as kube-prometheus's
// job apiserver does, with the sandbox's admin client certificate.
func apiServerJob(dir string) (prometheustest.Job, error) {
	u, err := url.Parse(sb.Config.Host)
	if err != nil {
		return prometheustest.Job{}, err
	}
	if len(sb.Config.CertData) == 0 || len(sb.Config.KeyData) == 0 {
		return prometheustest.Job{}, errors.New("the sandbox's API server config has no client certificate to scrape it with")
	}
	cert, key := filepath.Join(dir, "apiserver-client.crt"), filepath.Join(dir, "apiserver-client.key")
	for f, data := range map[string][]byte{cert: sb.Config.CertData, key: sb.Config.KeyData} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			return prometheustest.Job{}, err
		}
	}
	return prometheustest.Job{Name: "apiserver", Targets: []string{u.Host}, Scheme: "https",
		TLS: map[string]any{"cert_file": cert, "key_file": key, "insecure_skip_verify": true}}, nil
}

func joinErr(a, b error) error {
	if a == nil {
		return b
	}
	if b != nil {
		return fmt.Errorf("%w; %w", a, b)
	}
	return a
}

// TestBundleApplies applies the whole bundle as a user would, with kubectl,
// to an API server holding the Prometheus Operator's CRDs, generated from the
// Go types of their module (github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring).
func TestBundleApplies(t *testing.T) {
	crds, err := prometheustest.CRDs(t.Context(), root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"podmonitors", "prometheusrules"} {
		if out, err := sb.Kubectl(t.Context(), "", "apply", "--server-side", "-f", filepath.Join(crds, "monitoring.coreos.com_"+kind+".yaml")); err != nil {
			t.Fatalf("apply the %s CRD: %v\n%s", kind, err, out)
		}
		if out, err := sb.Kubectl(t.Context(), "", "wait", "--for=condition=Established", "--timeout=60s", "crd/"+kind+".monitoring.coreos.com"); err != nil {
			t.Fatalf("CRD %s: %v\n%s", kind, err, out)
		}
	}
	out, err := sb.Kubectl(t.Context(), "", "apply", "-k", filepath.Join(root, "deploy", "monitoring"))
	if err != nil {
		t.Fatalf("kubectl apply -k deploy/monitoring: %v\n%s", err, out)
	}
	for _, obj := range []string{"podmonitor/power-webhook", "podmonitor/power-agent", "prometheusrule/gpu-power", "configmap/gpu-power-dashboard"} {
		if !strings.Contains(out, strings.Split(obj, "/")[1]) {
			t.Errorf("kubectl apply -k did not create %s:\n%s", obj, out)
		}
		if _, err := sb.Kubectl(t.Context(), "", "-n", sandbox.Namespace, "get", obj); err != nil {
			t.Errorf("%s: %v", obj, err)
		}
	}
}

// TestRulesPassPromtool checks the shipped rules as written (their `for`
// durations too): promtool check rules, and the unit tests of
// testdata/rules_test.yaml, which evaluate them on synthetic series.
func TestRulesPassPromtool(t *testing.T) {
	if out, err := exec.CommandContext(t.Context(), promtool, "check", "rules", exactRules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	tests, err := os.ReadFile(filepath.Join("testdata", "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The unit tests name the rule file they test: the one written in setup.
	unit := filepath.Join(filepath.Dir(exactRules), "rules_test.yaml")
	if err := os.WriteFile(unit, bytes.ReplaceAll(tests, []byte("RULES_FILE"), []byte(filepath.Base(exactRules))), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(t.Context(), promtool, "test", "rules", unit).CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// dashboardQueries returns every PromQL expression of the shipped dashboard.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "monitoring", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	if len(out) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return out
}

// waitForSeries waits until expr returns at least one series.
func waitForSeries(t *testing.T, expr string) []prometheustest.Sample {
	t.Helper()
	var got []prometheustest.Sample
	poll.Eventually(t, fireWithin, "series of "+expr, func() (bool, string) {
		var err error
		got, err = prom.Query(t.Context(), expr)
		if err != nil {
			return false, err.Error()
		}
		return len(got) > 0, fmt.Sprintf("%d series", len(got))
	})
	return got
}
