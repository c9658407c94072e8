// Package prometheustest runs a real Prometheus (Debian's prometheus package,
// installed with apt-get when missing, as the real-node suite installs
// containerd) for tests: it scrapes the given targets, evaluates the rule
// groups of the shipped PrometheusRule objects, and answers queries and alert
// states through Prometheus's HTTP API.
//
// It holds Ensure (find or install prometheus and promtool), Start and its
// Server (Query, Alerts, WaitForAlert, Stop), RuleGroups, which reads the
// groups of a PrometheusRule manifest, with `for` durations optionally
// scaled so a test can see an alert fire in seconds, and CRDs, which
// generates the Prometheus Operator's CRDs from their Go module.
package prometheustest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/apt"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// Ensure returns the paths of prometheus and promtool, installing Debian's
// prometheus package first when either is missing.
func Ensure(logf func(string, ...any)) (prometheus, promtool string, err error) {
	find := func() (string, string, error) {
		p, err := exec.LookPath("prometheus")
		if err != nil {
			return "", "", err
		}
		t, err := exec.LookPath("promtool")
		return p, t, err
	}
	if p, t, err := find(); err == nil {
		return p, t, nil
	}
	if err := apt.Install(logf, "prometheus and promtool", "prometheus"); err != nil {
		return "", "", err
	}
	return find()
}

// RuleGroups reads the spec.groups of the PrometheusRule objects in a
// manifest file as a Prometheus rule file. With scale > 0 every `for`
// duration is multiplied by it (0.01: ten minutes become six seconds); the
// expressions, labels and annotations are the file's own.
func RuleGroups(manifest string, scale float64) ([]byte, error) {
	raw, err := os.ReadFile(manifest)
	if err != nil {
		return nil, err
	}
	var groups []monitoringv1.RuleGroup
	for _, doc := range strings.Split(string(raw), "\n---") {
		var rule monitoringv1.PrometheusRule
		if err := yaml.UnmarshalStrict([]byte(doc), &rule); err != nil {
			return nil, fmt.Errorf("%s: %w", manifest, err)
		}
		if rule.Kind == monitoringv1.PrometheusRuleKind {
			groups = append(groups, rule.Spec.Groups...)
		}
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("%s holds no PrometheusRule groups", manifest)
	}
	for _, g := range groups {
		for i := range g.Rules {
			r := &g.Rules[i]
			if scale <= 0 || r.For == nil {
				continue
			}
			d, err := time.ParseDuration(string(*r.For))
			if err != nil {
				return nil, fmt.Errorf("rule %s: for: %w", r.Alert, err)
			}
			scaled := monitoringv1.Duration(max(time.Second, time.Duration(float64(d)*scale)).Round(time.Second).String())
			r.For = &scaled
		}
	}
	return yaml.Marshal(map[string]any{"groups": groups})
}

// ControllerToolsVersion is the Makefile's CONTROLLER_TOOLS_VERSION (test/manifests holds them equal).
const ControllerToolsVersion = "v0.23.0"

// CRDs generates the Prometheus Operator's monitoring.coreos.com/v1 CRDs
// into dir from the Go types of their module (the version go.mod requires),
// with controller-gen, and returns dir. Files are named
// monitoring.coreos.com_<plural>.yaml.
func CRDs(ctx context.Context, root, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "run", "sigs.k8s.io/controller-tools/cmd/controller-gen@"+ControllerToolsVersion,
		"crd:maxDescLen=0", "paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1", "output:crd:dir="+dir)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("controller-gen of the Prometheus Operator CRDs: %w\n%s", err, out)
	}
	return dir, nil
}

// Server is a running Prometheus.
type Server struct {
	URL string
	cmd *exec.Cmd
	log string
	// done is closed when the process has exited.
	done chan struct{}
}

// Job is a scrape job: its targets with the labels the Prometheus Operator's
// service discovery would give them (namespace, pod, container, endpoint,
// and what a PodMonitor's relabelings add), so the rules and queries meet
// the label sets they meet on a cluster.
type Job struct {
	Name        string
	Targets     []string
	Labels      map[string]string
	HonorLabels bool
	// Scheme is https for a TLS target (http when empty), with TLS its
	// tls_config (cert_file, key_file, insecure_skip_verify, ...).
	Scheme string
	TLS    map[string]any
}

// Start runs prometheus in dir, scraping each job's targets every second and
// evaluating the rule files every second, and returns once it is ready.
func Start(ctx context.Context, bin, dir string, jobs []Job, ruleFiles ...string) (*Server, error) {
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	var scrape []map[string]any
	for _, j := range jobs {
		job := map[string]any{
			"job_name": j.Name, "scrape_interval": "1s", "scrape_timeout": "900ms", "honor_labels": j.HonorLabels,
			"static_configs": []map[string]any{{"targets": j.Targets, "labels": j.Labels}},
		}
		if j.Scheme != "" {
			job["scheme"] = j.Scheme
		}
		if j.TLS != nil {
			job["tls_config"] = j.TLS
		}
		scrape = append(scrape, job)
	}
	cfg, err := yaml.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"rule_files":     ruleFiles,
		"scrape_configs": scrape,
	})
	if err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(config, cfg, 0o644); err != nil {
		return nil, err
	}
	s := &Server{URL: "http://" + addr, log: filepath.Join(dir, "prometheus.log"), done: make(chan struct{})}
	logFile, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	s.cmd = exec.Command(bin, "--config.file="+config, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--web.enable-lifecycle")
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	if err := s.cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("start prometheus: %w", err)
	}
	go func() {
		_ = s.cmd.Wait()
		_ = logFile.Close()
		close(s.done)
	}()
	err = poll.Until(ctx, poll.Opts{Interval: 100 * time.Millisecond, Timeout: time.Minute}, "prometheus ready", func(context.Context) (bool, string, error) {
		select {
		case <-s.done:
			return false, "", fmt.Errorf("prometheus exited: %s", s.LogTail(20))
		default:
		}
		resp, err := http.Get(s.URL + "/-/ready")
		if err != nil {
			return false, err.Error(), nil // not listening yet
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
	if err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop ends Prometheus.
func (s *Server) Stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	return nil
}

// LogTail is the last n lines of Prometheus's log.
func (s *Server) LogTail(n int) string {
	data, err := os.ReadFile(s.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// Sample is one series of an instant query's answer.
type Sample struct {
	Metric map[string]string
	Value  string
}

// Query runs an instant PromQL query and returns its series; a query
// Prometheus refuses is an error.
func (s *Server) Query(ctx context.Context, expr string) ([]Sample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if err := s.get(ctx, "/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	out := make([]Sample, 0, len(data.Result))
	for _, r := range data.Result {
		out = append(out, Sample{Metric: r.Metric, Value: fmt.Sprint(r.Value[1])})
	}
	return out, nil
}

// Alert is an alert as Prometheus's /api/v1/alerts reports it.
type Alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
}

// Alerts returns the pending and firing alerts.
func (s *Server) Alerts(ctx context.Context) ([]Alert, error) {
	var data struct {
		Alerts []Alert `json:"alerts"`
	}
	if err := s.get(ctx, "/api/v1/alerts", &data); err != nil {
		return nil, err
	}
	return data.Alerts, nil
}

// WaitForAlert waits until an alert of that name whose labels include match
// is firing, and returns it.
func (s *Server) WaitForAlert(ctx context.Context, name string, match map[string]string, timeout time.Duration) (Alert, error) {
	var found Alert
	err := poll.Until(ctx, poll.Opts{Interval: 250 * time.Millisecond, Timeout: timeout}, fmt.Sprintf("alert %s%v firing", name, match), func(ctx context.Context) (bool, string, error) {
		alerts, err := s.Alerts(ctx)
		if err != nil {
			return false, "", err
		}
		var seen []string
		for _, a := range alerts {
			seen = append(seen, a.Labels["alertname"]+"="+a.State)
			if a.Labels["alertname"] != name || a.State != "firing" {
				continue
			}
			ok := true
			for k, v := range match {
				ok = ok && a.Labels[k] == v
			}
			if ok {
				found = a
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("alerts %v", seen), nil
	})
	if err != nil {
		return Alert{}, err
	}
	return found, nil
}

func (s *Server) get(ctx context.Context, path string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	var envelope struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &envelope); err != nil {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
	}
	if envelope.Status != "success" {
		return fmt.Errorf("%s", envelope.Error)
	}
	return json.Unmarshal(envelope.Data, into)
}
