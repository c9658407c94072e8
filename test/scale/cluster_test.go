package scale_test

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
)

// TestScaleCluster builds a large cluster in the sandbox's API server and
// measures the webhook in it: SCALE_NODES GPU nodes (5,000), SCALE_GPU_PODS
// one-GPU pods (30,000) created through both webhooks into 20 namespaces a
// GPUPowerBudget selects, and SCALE_OTHER_PODS pods without GPUs (70,000) in
// 30 other namespaces, which the webhook configurations keep from the
// webhook but its informers still see. It reports:
//   - the webhook's live heap after a forced GC, its RSS, anonymous RSS and
//     peak (VmHWM) on the empty cluster, after the nodes, after the GPU pods
//     and after the other pods, and from those the bytes each costs;
//   - a restart on the full cluster: start to ready (every informer synced),
//     the new process's peak RSS during that sync and its RSS after;
//   - SCALE_ADMISSIONS more GPU pods (1,000) from 10 clients at that size:
//     creates/s, p50, p99, the handlers' mean latency and the CPU per pod of
//     the webhook, the API server and etcd.
//
// It fails if the budget's status does not count exactly the GPU pods (the
// reconciler misses or double-counts a charged pod), or if any create fails.
// SCALE_REPORT=<file> also writes the tables (markdown, or JSON for a .json
// name). A measurement, not a check: it needs SCALE_BENCH=1 (`make
// bench-scale`, with a -timeout above go test's 10 minutes); at full size it
// writes 100,000 pods (a tenth of the size took 30 s on 2 cores).
func TestScaleCluster(t *testing.T) {
	if os.Getenv("SCALE_BENCH") != "1" {
		t.Skip("a measurement, not a check: `make bench-scale` (SCALE_BENCH=1) runs it")
	}
	r := &scaleReport{
		Nodes: envInt(t, "SCALE_NODES", 5000), GPUPods: envInt(t, "SCALE_GPU_PODS", 30000),
		OtherPods: envInt(t, "SCALE_OTHER_PODS", 70000), Admissions: envInt(t, "SCALE_ADMISSIONS", 1000),
		Workers: envInt(t, "SCALE_WORKERS", 24), GPUNamespaces: 20, OtherNamespaces: 30,
		EtcdDir: fsKind(os.TempDir()), Started: time.Now().Format(time.RFC3339),
	}
	began := time.Now()
	timed := func(name string, n int, f func() load) load {
		t.Helper()
		t.Logf("==> %s", name)
		l := f()
		r.Phases = append(r.Phases, phaseRow{Phase: name, Seconds: l.elapsed.Seconds(), Objects: n, PerSecond: l.rate(),
			Retries: l.retries, LoadStart: l.loadStart, LoadEnd: l.loadEnd})
		t.Logf("    %s: %d in %s (%.0f/s, %d retried), load %s -> %s", name, n, seconds(l.elapsed), l.rate(), l.retries, l.loadStart, l.loadEnd)
		return l
	}
	waited := func(name string, f func() time.Duration) {
		t.Helper()
		start := loadavg()
		d := f()
		r.Phases = append(r.Phases, phaseRow{Phase: name, Seconds: d.Seconds(), LoadStart: start, LoadEnd: loadavg()})
		t.Logf("    %s: %s", name, seconds(d))
	}
	sandboxStart := time.Now()
	load0 := loadavg()
	b := startBench(t)
	r.Phases = append(r.Phases, phaseRow{Phase: "sandbox start", Seconds: time.Since(sandboxStart).Seconds(), LoadStart: load0, LoadEnd: loadavg()})
	mem := func(point string, m memory) memory {
		r.Memory = append(r.Memory, memRow{Point: point, memory: m})
		t.Logf("    webhook memory, %s: heap in use %s, heap allocated %s, %.0f heap objects, RSS %s, anonymous %s, peak %s (API server RSS %s)",
			point, mib(m.HeapInuse), mib(m.HeapAlloc), m.HeapObjects, mib(float64(m.RSS)), mib(float64(m.AnonRSS)), mib(float64(m.PeakRSS)), mib(float64(m.APIServerRSS)))
		return m
	}
	empty := mem("empty cluster", b.webhookMemory())

	ctx := t.Context()
	nodeName := func(i int) string { return fmt.Sprintf("gpu-node-%05d", i) }
	gpuNS := func(i int) string { return fmt.Sprintf("gpu-team-%02d", i%r.GPUNamespaces) }
	otherNS := func(i int) string { return fmt.Sprintf("apps-%02d", i%r.OtherNamespaces) }
	for i := range r.GPUNamespaces {
		if _, err := b.cs.CoreV1().Namespaces().Create(ctx, namespace(gpuNS(i), map[string]string{"team": "gpu"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range r.OtherNamespaces {
		if _, err := b.cs.CoreV1().Namespaces().Create(ctx, namespace(otherNS(i), map[string]string{"team": "apps"}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	timed(fmt.Sprintf("create %d nodes", r.Nodes), r.Nodes, func() load {
		return b.parallel("nodes", r.Nodes, r.Workers, func(ctx context.Context, i int) error {
			_, err := b.cs.CoreV1().Nodes().Create(ctx, gpuNode(nodeName(i), i), metav1.CreateOptions{})
			return err
		})
	})
	// Nothing the webhook serves tells when its node index holds the last
	// node: read until two forced-GC readings agree.
	var afterNodes memory
	waited("webhook memory settles after the nodes", func() time.Duration {
		return b.poll("the webhook's heap settles after the nodes", 2*time.Second, time.Minute, func(context.Context) (bool, string, error) {
			prev := afterNodes
			afterNodes = b.webhookMemory()
			d := math.Abs(afterNodes.HeapObjects-prev.HeapObjects) / max(1, afterNodes.HeapObjects)
			return d < 0.01, fmt.Sprintf("%.0f -> %.0f heap objects", prev.HeapObjects, afterNodes.HeapObjects), nil
		})
	})
	mem(fmt.Sprintf("%d nodes", r.Nodes), afterNodes)

	gpuCreate := func(prefix string) func(ctx context.Context, i int) error {
		return func(ctx context.Context, i int) error {
			_, err := b.cs.CoreV1().Pods(gpuNS(i)).Create(ctx, gpuPod(fmt.Sprintf("%s-%06d", prefix, i), gpuNS(i), nodeName(i%r.Nodes)), metav1.CreateOptions{})
			return err
		}
	}
	timed(fmt.Sprintf("create %d GPU pods through both webhooks", r.GPUPods), r.GPUPods, func() load {
		return b.parallel("GPU pods", r.GPUPods, r.Workers, gpuCreate("gpu"))
	})

	// The budget comes after the pods (no reservation per create while the
	// cluster is built); its status must count every one of them.
	budget := &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "scale-team-gpu"},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{
			TotalWatts:        1_000_000_000,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "gpu"}},
		},
	}
	if err := b.sb.Client.Create(ctx, budget); err != nil {
		t.Fatal(err)
	}
	budgetCounts := func(want int) func(ctx context.Context) (bool, string, error) {
		return func(ctx context.Context) (bool, string, error) {
			var got powerv1alpha1.GPUPowerBudget
			if err := b.sb.Client.Get(ctx, types.NamespacedName{Name: budget.Name}, &got); err != nil {
				return false, err.Error(), nil
			}
			s := got.Status
			if s.Pods > int64(want) {
				return false, "", fmt.Errorf("budget status counts %d pods, more than the %d GPU pods there are", s.Pods, want)
			}
			return s.Pods == int64(want), fmt.Sprintf("status: %d pods, %d GPUs, %d W committed, %d reservations", s.Pods, s.GPUs, s.CommittedWatts, len(s.Reservations)), nil
		}
	}
	waited(fmt.Sprintf("budget status counts the %d GPU pods", r.GPUPods), func() time.Duration {
		return b.poll("the budget's status counts every GPU pod", 500*time.Millisecond, 10*time.Minute, budgetCounts(r.GPUPods))
	})
	afterGPU := mem(fmt.Sprintf("%d nodes, %d GPU pods", r.Nodes, r.GPUPods), b.webhookMemory())

	timed(fmt.Sprintf("create %d pods without GPUs (not sent to the webhook)", r.OtherPods), r.OtherPods, func() load {
		return b.parallel("other pods", r.OtherPods, r.Workers, func(ctx context.Context, i int) error {
			_, err := b.cs.CoreV1().Pods(otherNS(i)).Create(ctx, otherPod(fmt.Sprintf("app-%06d", i), otherNS(i), nodeName(i%r.Nodes), i), metav1.CreateOptions{})
			return err
		})
	})
	// One more GPU pod after them: once the budget counts it, the webhook's
	// pod watch has delivered every pod created before it.
	if _, err := b.cs.CoreV1().Pods(gpuNS(0)).Create(ctx, gpuPod("sentinel", gpuNS(0), nodeName(0)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	charged := r.GPUPods + 1
	waited("budget status counts a GPU pod created after the other pods", func() time.Duration {
		return b.poll("the budget counts the sentinel pod", 500*time.Millisecond, 10*time.Minute, budgetCounts(charged))
	})
	afterOther := mem(fmt.Sprintf("%d nodes, %d GPU pods, %d other pods", r.Nodes, charged, r.OtherPods), b.webhookMemory())

	perObject := func(object string, n int, from, to memory) {
		d := func(a, b float64) float64 { return (b - a) / float64(n) }
		r.PerObject = append(r.PerObject, perObjectRow{Object: object, N: n,
			HeapAlloc: d(from.HeapAlloc, to.HeapAlloc), HeapInuse: d(from.HeapInuse, to.HeapInuse), HeapObjects: d(from.HeapObjects, to.HeapObjects),
			RSS: d(float64(from.RSS), float64(to.RSS)), AnonRSS: d(float64(from.AnonRSS), float64(to.AnonRSS))})
	}
	perObject("node", r.Nodes, empty, afterNodes)
	perObject("GPU pod", r.GPUPods, afterNodes, afterGPU)
	perObject("other pod", r.OtherPods, afterGPU, afterOther)
	perObject("any pod (nodes excluded)", charged+r.OtherPods, afterNodes, afterOther)

	// A restart at full size: what a rollout or an OOM kill costs.
	t.Logf("==> restart the webhook on the full cluster")
	r.Restart.LoadStart = loadavg()
	if err := b.sb.Webhook.Stop(time.Minute); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := b.sb.Webhook.Start(ctx); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	st, err := procStatus(b.sb.Webhook.Pid())
	if err != nil {
		t.Fatal(err)
	}
	r.Restart.ReadySeconds, r.Restart.PeakRSSAtReady, r.Restart.RSSAtReady = ready.Seconds(), st["VmHWM"], st["VmRSS"]
	r.Restart.After = b.webhookMemory()
	r.Restart.LoadEnd = loadavg()
	r.Phases = append(r.Phases, phaseRow{Phase: "webhook restart: start to ready", Seconds: ready.Seconds(), LoadStart: r.Restart.LoadStart, LoadEnd: r.Restart.LoadEnd})
	t.Logf("    ready in %s; at ready RSS %s, peak %s; after a GC heap in use %s, RSS %s", seconds(ready),
		mib(float64(st["VmRSS"])), mib(float64(st["VmHWM"])), mib(r.Restart.After.HeapInuse), mib(float64(r.Restart.After.RSS)))

	// Admissions at that size, budgeted: each reserves in the budget.
	const clients = 10
	before, cpu0 := b.webhookMetrics(), b.cpus()
	l := timed(fmt.Sprintf("admission: %d GPU pods from %d clients", r.Admissions, clients), r.Admissions, func() load {
		return b.parallel("admissions", r.Admissions, clients, gpuCreate("admitted"))
	})
	cpu, after := b.cpus().sub(cpu0), b.webhookMetrics()
	a := &r.Admission
	a.Pods, a.Clients, a.PerSecond, a.Retries = r.Admissions, clients, l.rate(), l.retries
	a.P50ms, a.P99ms = float64(l.pct(0.5).Microseconds())/1000, float64(l.pct(0.99).Microseconds())/1000
	a.HandlerMeanMs, a.HandlerCalls = map[string]float64{}, handlerCounts(before, after)
	for p, d := range handlerMeans(before, after) {
		a.HandlerMeanMs[p] = float64(d.Microseconds()) / 1000
	}
	a.WebhookCPUPerPodUs = float64(cpu.webhook.Microseconds()) / float64(r.Admissions)
	a.APIServerCPUPerPodUs = float64(cpu.apiserver.Microseconds()) / float64(r.Admissions)
	a.EtcdCPUPerPodUs = float64(cpu.etcd.Microseconds()) / float64(r.Admissions)
	a.LoadStart, a.LoadEnd = l.loadStart, l.loadEnd
	charged += r.Admissions
	waited(fmt.Sprintf("budget status counts all %d GPU pods", charged), func() time.Duration {
		return b.poll("the budget counts every admitted pod", 500*time.Millisecond, 5*time.Minute, budgetCounts(charged))
	})
	r.TotalSeconds = time.Since(began).Seconds()

	md := r.markdown()
	t.Log("\n" + md)
	writeReport(t, "SCALE_REPORT", md, r)
}

type scaleReport struct {
	Started                                        string
	Nodes, GPUPods, OtherPods, Admissions, Workers int
	GPUNamespaces, OtherNamespaces                 int
	EtcdDir                                        string
	Phases                                         []phaseRow
	Memory                                         []memRow
	PerObject                                      []perObjectRow
	Restart                                        restartRow
	Admission                                      admissionRow
	TotalSeconds                                   float64
}

type phaseRow struct {
	Phase              string
	Seconds            float64
	Objects            int     `json:",omitempty"`
	PerSecond          float64 `json:",omitempty"`
	Retries            int64   `json:",omitempty"`
	LoadStart, LoadEnd string
}

type memRow struct {
	Point string
	memory
}

// perObjectRow is what one more object costs, in bytes (objects for
// HeapObjects).
type perObjectRow struct {
	Object                                          string
	N                                               int
	HeapAlloc, HeapInuse, HeapObjects, RSS, AnonRSS float64
}

type restartRow struct {
	ReadySeconds               float64
	PeakRSSAtReady, RSSAtReady int64
	After                      memory
	LoadStart, LoadEnd         string
}

type admissionRow struct {
	Pods, Clients                                             int
	PerSecond, P50ms, P99ms                                   float64
	HandlerMeanMs, HandlerCalls                               map[string]float64
	WebhookCPUPerPodUs, APIServerCPUPerPodUs, EtcdCPUPerPodUs float64
	Retries                                                   int64
	LoadStart, LoadEnd                                        string
}

func (r *scaleReport) markdown() string {
	var w strings.Builder
	f := func(format string, args ...any) { fmt.Fprintf(&w, format+"\n", args...) }
	f("Scale: %d nodes, %d GPU pods in %d namespaces, %d other pods in %d namespaces, %d creating clients; etcd data on %s; started %s, %.0f s in all.",
		r.Nodes, r.GPUPods, r.GPUNamespaces, r.OtherPods, r.OtherNamespaces, r.Workers, r.EtcdDir, r.Started, r.TotalSeconds)
	f("")
	f("| phase | time | objects | per second | retried | load at start -> end |")
	f("|---|---|---|---|---|---|")
	for _, p := range r.Phases {
		objects, rate := "", ""
		if p.Objects > 0 {
			objects, rate = fmt.Sprint(p.Objects), fmt.Sprintf("%.0f", p.PerSecond)
		}
		f("| %s | %.1f s | %s | %s | %d | %s -> %s |", p.Phase, p.Seconds, objects, rate, p.Retries, p.LoadStart, p.LoadEnd)
	}
	f("")
	f("Webhook memory (heap after a forced GC, from its /metrics; RSS from /proc):")
	f("")
	f("| cluster | heap in use | heap allocated | heap objects | RSS | anonymous | peak RSS (VmHWM) | API server RSS | load |")
	f("|---|---|---|---|---|---|---|---|---|")
	for _, m := range r.Memory {
		f("| %s | %s | %s | %.0f | %s | %s | %s | %s | %s |", m.Point, mib(m.HeapInuse), mib(m.HeapAlloc), m.HeapObjects,
			mib(float64(m.RSS)), mib(float64(m.AnonRSS)), mib(float64(m.PeakRSS)), mib(float64(m.APIServerRSS)), m.Load)
	}
	f("")
	f("| per object (difference of two rows / count) | count | heap allocated | heap in use | heap objects | RSS | anonymous |")
	f("|---|---|---|---|---|---|---|")
	for _, p := range r.PerObject {
		f("| %s | %d | %.0f B | %.0f B | %.1f | %.0f B | %.0f B |", p.Object, p.N, p.HeapAlloc, p.HeapInuse, p.HeapObjects, p.RSS, p.AnonRSS)
	}
	f("")
	f("(The heap columns are live memory after a GC; RSS also holds pages the Go runtime has not yet returned to the kernel, so its differences are noisy and can be negative.)")
	f("")
	rs := r.Restart
	f("Restart on the full cluster: ready (every informer synced) %.1f s after start; at ready RSS %s, peak RSS during the sync (VmHWM) %s; after a forced GC heap in use %s, heap allocated %s, RSS %s, anonymous %s; load %s -> %s.",
		rs.ReadySeconds, mib(float64(rs.RSSAtReady)), mib(float64(rs.PeakRSSAtReady)), mib(rs.After.HeapInuse), mib(rs.After.HeapAlloc),
		mib(float64(rs.After.RSS)), mib(float64(rs.After.AnonRSS)), rs.LoadStart, rs.LoadEnd)
	f("")
	a := r.Admission
	f("Admission at that size (%d budgeted GPU pods, %d clients):", a.Pods, a.Clients)
	f("")
	f("| creates/s | p50 | p99 | handler mean %s | handler mean %s | webhook CPU/pod | API server CPU/pod | etcd CPU/pod | retried | load |", webhookPaths[0], webhookPaths[1])
	f("|---|---|---|---|---|---|---|---|---|---|")
	f("| %.0f | %.1f ms | %.1f ms | %.2f ms (%.0f calls) | %.2f ms (%.0f calls) | %.0f µs | %.0f µs | %.0f µs | %d | %s -> %s |",
		a.PerSecond, a.P50ms, a.P99ms, a.HandlerMeanMs[webhookPaths[0]], a.HandlerCalls[webhookPaths[0]], a.HandlerMeanMs[webhookPaths[1]], a.HandlerCalls[webhookPaths[1]],
		a.WebhookCPUPerPodUs, a.APIServerCPUPerPodUs, a.EtcdCPUPerPodUs, a.Retries, a.LoadStart, a.LoadEnd)
	return w.String()
}
