package scale_test

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// TestAdmissionCPU measures what the webhooks cost per admission, the way
// issue 13 measured it: ADMISSION_PODS one-GPU pods asking for 500 W (2,000),
// bound to a labelled H100 node, created from ADMISSION_CLIENTS clients (10),
// alternately into a namespace both webhooks intercept and into kube-system,
// which their namespaceSelector skips: the same API server in the same
// minutes, with and without the webhook on the path. ADMISSION_ROUNDS rounds
// (3), the order rotated each round so drifting load falls on every kind;
// ADMISSION_BUDGET=1 adds a third kind, a namespace a GPUPowerBudget with
// room for every pod selects (each admission reserves); ADMISSION_FLOOR=1
// one more, pods into kube-system that a do-nothing webhook
// (test/scale/floorwebhook, its own process) serves through both kinds of
// configuration: what serving two reviews a pod costs on the machine, the
// floor under the power webhook's CPU. Each run's pods are deleted before the
// next, once the processes are idle again.
//
// Per run: creates/s, p50 and p99 of the create call, the CPU time (user +
// system, /proc/<pid>/stat) the webhook, the API server and etcd spent over
// the run divided by the pods, the handlers' mean latency from
// controller_runtime_webhook_latency_seconds, and the p99 of an intercepted
// run over the skipped run's of the same round. The webhook's CPU in a
// skipped run is what its informers cost (every pod still reaches its
// watch). ADMISSION_PPROF=<file> writes a CPU profile of the webhook taken
// during the first intercepted run (ADMISSION_PPROF_SECONDS, 5), or with
// ADMISSION_PPROF_KIND=allocs what it allocated meanwhile;
// ADMISSION_REPORT=<file> the tables (markdown, or JSON for a .json name).
//
// It fails if a skipped run reached the webhook, an intercepted one did not,
// or a budget's status miscounts. A measurement: it needs ADMISSION_BENCH=1
// (`make bench-admission`).
func TestAdmissionCPU(t *testing.T) {
	if os.Getenv("ADMISSION_BENCH") != "1" {
		t.Skip("a measurement, not a check: `make bench-admission` (ADMISSION_BENCH=1) runs it")
	}
	r := &admissionReport{
		Pods: envInt(t, "ADMISSION_PODS", 2000), Rounds: envInt(t, "ADMISSION_ROUNDS", 3), Clients: envInt(t, "ADMISSION_CLIENTS", 10),
		Started: time.Now().Format(time.RFC3339), EtcdDir: fsKind(os.TempDir()),
	}
	profile, profileSeconds := repoPath(os.Getenv("ADMISSION_PPROF")), envInt(t, "ADMISSION_PPROF_SECONDS", 5)
	profileKind := cmp.Or(os.Getenv("ADMISSION_PPROF_KIND"), "profile")
	if profileKind != "profile" && profileKind != "allocs" {
		t.Fatalf("ADMISSION_PPROF_KIND=%s: want profile (CPU, the default) or allocs", profileKind)
	}
	b := startBench(t)
	ctx := t.Context()

	const node = "bench-gpu-node-0"
	if _, err := b.cs.CoreV1().Nodes().Create(ctx, gpuNode(node, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kinds := []admissionKind{
		{Name: "intercepted", Namespace: "admission-intercepted", Intercepted: true},
		{Name: "skipped", Namespace: "kube-system"},
	}
	const budgetLabel = "power.bench/budget"
	if os.Getenv("ADMISSION_BUDGET") == "1" {
		kinds = append(kinds, admissionKind{Name: "budgeted", Namespace: "admission-budgeted", Intercepted: true, Budget: "admission-bench"})
	}
	var floor *floorWebhook
	if os.Getenv("ADMISSION_FLOOR") == "1" {
		floor = startFloor(b, t.TempDir())
		kinds = append(kinds, admissionKind{Name: "floor", Namespace: "kube-system", Floor: true})
	}
	for _, k := range kinds {
		if k.Namespace == "kube-system" {
			continue
		}
		labels := map[string]string{}
		if k.Budget != "" {
			labels[budgetLabel] = k.Budget
		}
		if _, err := b.cs.CoreV1().Namespaces().Create(ctx, namespace(k.Namespace, labels), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if k.Budget == "" {
			continue
		}
		budget := &powerv1alpha1.GPUPowerBudget{
			ObjectMeta: metav1.ObjectMeta{Name: k.Budget},
			Spec: powerv1alpha1.GPUPowerBudgetSpec{
				TotalWatts:        int64(r.Pods) * 500 * 2,
				NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{budgetLabel: k.Budget}},
			},
		}
		if err := b.sb.Client.Create(ctx, budget); err != nil {
			t.Fatal(err)
		}
		b.poll("the budget has a status", 100*time.Millisecond, time.Minute, budgetPods(b, k.Budget, 0))
	}

	const runLabel = "power.bench/run"
	profiled := false
	for round := 1; round <= r.Rounds; round++ {
		order := append(slices.Clone(kinds[(round-1)%len(kinds):]), kinds[:(round-1)%len(kinds)]...)
		for _, k := range order {
			id := fmt.Sprintf("r%d-%s", round, k.Name)
			quiet := b.quiet()
			var profileDone chan error
			if profile != "" && k.Intercepted && k.Budget == "" && !profiled {
				profiled, profileDone = true, make(chan error, 1)
				go func() { profileDone <- b.profile(profileKind, profile, profileSeconds) }()
			}
			var floorCPU0 time.Duration
			var floorCount0 int
			if k.Floor {
				floorCPU0, floorCount0 = floor.usage(t)
			}
			m0, c0 := b.webhookMetrics(), b.cpus()
			l := b.parallel(id, r.Pods, r.Clients, func(ctx context.Context, i int) error {
				p := gpuPod(fmt.Sprintf("%s-%05d", id, i), k.Namespace, node)
				p.Labels[runLabel] = id
				if k.Floor {
					p.Labels[floorLabel] = "true"
				}
				_, err := b.cs.CoreV1().Pods(k.Namespace).Create(ctx, p, metav1.CreateOptions{})
				return err
			})
			c, m1 := b.cpus().sub(c0), b.webhookMetrics()
			run := admissionRun{
				Round: round, Kind: k.Name, Namespace: k.Namespace, Intercepted: k.Intercepted, Profiled: profileDone != nil,
				PerSecond: l.rate(), P50ms: msf(l.pct(0.5)), P99ms: msf(l.pct(0.99)), Retries: l.retries,
				WebhookCPUPerPodUs: usPerPod(c.webhook, r.Pods), APIServerCPUPerPodUs: usPerPod(c.apiserver, r.Pods), EtcdCPUPerPodUs: usPerPod(c.etcd, r.Pods),
				HandlerCalls: handlerCounts(m0, m1), HandlerMeanMs: map[string]float64{},
				QuietSeconds: quiet.Seconds(), LoadStart: l.loadStart, LoadEnd: l.loadEnd,
			}
			for p, d := range handlerMeans(m0, m1) {
				run.HandlerMeanMs[p] = msf(d)
			}
			if k.Floor {
				cpu, count := floor.usage(t)
				run.FloorCPUPerPodUs = usPerPod(cpu-floorCPU0, r.Pods)
				if served := count - floorCount0; served != 2*r.Pods {
					t.Errorf("%s: the floor webhook served %d reviews for %d pods; want two a pod", id, served, r.Pods)
				}
			}
			if profileDone != nil {
				if err := <-profileDone; err != nil {
					t.Fatalf("CPU profile: %v", err)
				}
				t.Logf("%s profile of the webhook during %s (%d s) written to %s", profileKind, id, profileSeconds, profile)
			}
			for _, p := range webhookPaths {
				if calls := run.HandlerCalls[p]; k.Intercepted && calls < float64(r.Pods) || !k.Intercepted && calls != 0 {
					t.Errorf("%s: the webhook served %s %.0f times for %d pods into %s", id, p, calls, r.Pods, k.Namespace)
				}
			}
			r.Runs = append(r.Runs, run)
			t.Logf("    %s: %.0f creates/s, p50 %.1f ms, p99 %.1f ms; CPU per pod: webhook %.0f µs, API server %.0f µs, etcd %.0f µs; load %s -> %s",
				id, run.PerSecond, run.P50ms, run.P99ms, run.WebhookCPUPerPodUs, run.APIServerCPUPerPodUs, run.EtcdCPUPerPodUs, run.LoadStart, run.LoadEnd)

			if k.Budget != "" {
				b.poll(fmt.Sprintf("the budget counts the %d pods of %s", r.Pods, id), 200*time.Millisecond, 2*time.Minute, budgetPods(b, k.Budget, r.Pods))
			}
			zero := int64(0)
			if err := b.cs.CoreV1().Pods(k.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
				metav1.ListOptions{LabelSelector: runLabel + "=" + id}); err != nil {
				t.Fatal(err)
			}
			b.poll(fmt.Sprintf("the pods of %s are gone", id), 200*time.Millisecond, 2*time.Minute, func(ctx context.Context) (bool, string, error) {
				pods, err := b.cs.CoreV1().Pods(k.Namespace).List(ctx, metav1.ListOptions{LabelSelector: runLabel + "=" + id})
				if err != nil {
					return false, err.Error(), nil
				}
				return len(pods.Items) == 0, fmt.Sprintf("%d left", len(pods.Items)), nil
			})
			if k.Budget != "" {
				b.poll(fmt.Sprintf("the budget counts none of %s", id), 200*time.Millisecond, 2*time.Minute, budgetPods(b, k.Budget, 0))
			}
		}
	}
	for i := range r.Runs {
		run := &r.Runs[i]
		if run.Kind == "skipped" {
			continue
		}
		for _, s := range r.Runs {
			if s.Round == run.Round && s.Kind == "skipped" && s.P99ms > 0 {
				run.P99Ratio = run.P99ms / s.P99ms
			}
		}
	}
	md := r.markdown()
	t.Log("\n" + md)
	writeReport(t, "ADMISSION_REPORT", md, r)
}

type admissionKind struct {
	Name, Namespace string
	Intercepted     bool
	// Budget names the budget selecting Namespace, if any.
	Budget string
	// Floor: the floor webhook serves the run's pods, the power webhook none.
	Floor bool
}

// budgetPods waits for a budget's status to count want pods.
func budgetPods(b *bench, name string, want int) func(context.Context) (bool, string, error) {
	return func(ctx context.Context) (bool, string, error) {
		var got powerv1alpha1.GPUPowerBudget
		if err := b.sb.Client.Get(ctx, types.NamespacedName{Name: name}, &got); err != nil {
			return false, err.Error(), nil
		}
		s := got.Status
		return s.Pods == int64(want) && s.ObservedGeneration == got.Generation,
			fmt.Sprintf("status: %d pods, %d W committed, %d reservations", s.Pods, s.CommittedWatts, len(s.Reservations)), nil
	}
}

// quiet waits, for at most a minute, until the webhook, the API server and
// etcd together use under a fifth of a core over a second: the previous
// run's deletions are then no longer being processed. It returns how long
// that took.
func (b *bench) quiet() time.Duration {
	b.t.Helper()
	start := time.Now()
	prev, prevAt := b.cpus(), time.Now()
	var rate float64
	// Delay: each look measures the second since the previous one.
	err := poll.Until(b.t.Context(), poll.Opts{Interval: time.Second, Timeout: time.Minute, Delay: true}, "idle", func(context.Context) (bool, string, error) {
		c, now := b.cpus(), time.Now()
		d := c.sub(prev)
		rate = (d.webhook + d.apiserver + d.etcd).Seconds() / now.Sub(prevAt).Seconds()
		prev, prevAt = c, now
		return rate < 0.2, "", nil
	})
	if err != nil {
		b.t.Logf("  the processes did not fall idle within a minute (last second: %.2f cores); measuring anyway", rate)
	}
	return time.Since(start)
}

// profile writes a profile of the webhook over the next seconds: its CPU
// (kind "profile") or its allocations ("allocs").
func (b *bench) profile(kind, path string, seconds int) error {
	body, err := httpGet(b.t.Context(), fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", b.pprof, kind, seconds))
	if err != nil {
		return err
	}
	return os.WriteFile(path, body, 0o644)
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func usPerPod(d time.Duration, n int) float64 { return float64(d.Nanoseconds()) / 1000 / float64(n) }

type admissionReport struct {
	Started               string
	Pods, Rounds, Clients int
	EtcdDir               string
	Runs                  []admissionRun
}

type admissionRun struct {
	Round                                                     int
	Kind, Namespace                                           string
	Intercepted, Profiled                                     bool
	PerSecond, P50ms, P99ms                                   float64
	WebhookCPUPerPodUs, APIServerCPUPerPodUs, EtcdCPUPerPodUs float64
	HandlerMeanMs, HandlerCalls                               map[string]float64
	// P99Ratio is a run's p99 over the skipped run's of the same round.
	P99Ratio float64 `json:",omitempty"`
	// FloorCPUPerPodUs is the floor webhook's CPU per pod, in a floor run.
	FloorCPUPerPodUs   float64 `json:",omitempty"`
	Retries            int64
	QuietSeconds       float64
	LoadStart, LoadEnd string
}

func (r *admissionReport) markdown() string {
	var w strings.Builder
	f := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	f("Admission CPU: %d one-GPU pods per run from %d clients, %d rounds; etcd data on %s; started %s.", r.Pods, r.Clients, r.Rounds, r.EtcdDir, r.Started)
	f("")
	f("| round | run (namespace) | creates/s | p50 | p99 | p99 / skipped | webhook CPU/pod | floor webhook CPU/pod | API server CPU/pod | etcd CPU/pod | handler mean %s, %s | retried | idle wait | load at start -> end |", webhookPaths[0], webhookPaths[1])
	f("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, run := range r.Runs {
		ratio, handler, floor := "", "", ""
		if run.Kind != "skipped" {
			ratio = fmt.Sprintf("%.2f", run.P99Ratio)
		}
		if run.Intercepted {
			handler = fmt.Sprintf("%.2f ms, %.2f ms", run.HandlerMeanMs[webhookPaths[0]], run.HandlerMeanMs[webhookPaths[1]])
		}
		if run.Kind == "floor" {
			floor = fmt.Sprintf("%.0f µs", run.FloorCPUPerPodUs)
		}
		kind := fmt.Sprintf("%s (%s)", run.Kind, run.Namespace)
		if run.Profiled {
			kind += ", CPU-profiled"
		}
		f("| %d | %s | %.0f | %.1f ms | %.1f ms | %s | %.0f µs | %s | %.0f µs | %.0f µs | %s | %d | %.0f s | %s -> %s |", run.Round, kind, run.PerSecond, run.P50ms, run.P99ms, ratio,
			run.WebhookCPUPerPodUs, floor, run.APIServerCPUPerPodUs, run.EtcdCPUPerPodUs, handler, run.Retries, run.QuietSeconds, run.LoadStart, run.LoadEnd)
	}
	f("")
	f("Medians over the rounds:")
	f("")
	f("| run | creates/s | p50 | p99 | p99 / skipped | webhook CPU/pod | floor webhook CPU/pod | API server CPU/pod | etcd CPU/pod |")
	f("|---|---|---|---|---|---|---|---|---|")
	var kinds []string
	for _, run := range r.Runs {
		if !slices.Contains(kinds, run.Kind) {
			kinds = append(kinds, run.Kind)
		}
	}
	for _, k := range kinds {
		med := func(v func(admissionRun) float64) float64 {
			var xs []float64
			for _, run := range r.Runs {
				if run.Kind == k {
					xs = append(xs, v(run))
				}
			}
			slices.Sort(xs)
			if len(xs)%2 == 1 {
				return xs[len(xs)/2]
			}
			return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
		}
		ratio, floor := "", ""
		if k != "skipped" {
			ratio = fmt.Sprintf("%.2f", med(func(r admissionRun) float64 { return r.P99Ratio }))
		}
		if k == "floor" {
			floor = fmt.Sprintf("%.0f µs", med(func(r admissionRun) float64 { return r.FloorCPUPerPodUs }))
		}
		f("| %s | %.0f | %.1f ms | %.1f ms | %s | %.0f µs | %s | %.0f µs | %.0f µs |", k,
			med(func(r admissionRun) float64 { return r.PerSecond }), med(func(r admissionRun) float64 { return r.P50ms }),
			med(func(r admissionRun) float64 { return r.P99ms }), ratio,
			med(func(r admissionRun) float64 { return r.WebhookCPUPerPodUs }), floor, med(func(r admissionRun) float64 { return r.APIServerCPUPerPodUs }),
			med(func(r admissionRun) float64 { return r.EtcdCPUPerPodUs }))
	}
	return w.String()
}
