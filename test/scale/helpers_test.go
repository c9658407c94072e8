package scale_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
)

// bench is a started sandbox and what the drivers measure it with.
type bench struct {
	t  *testing.T
	sb *sandbox.Sandbox
	// cs is a client with a raised QPS and burst: the drivers, not
	// client-go's rate limiter, decide the load.
	cs kubernetes.Interface
	// pprof is the webhook's --pprof-bind-address.
	pprof string
	// apiserver and etcd are the control plane's process ids.
	apiserver, etcd int
}

// startBench starts the sandbox on the binaries of BENCH_BIN_DIR (default
// bin/, what `make build` wrote), with the webhook's pprof endpoints on.
// Its folder is removed afterwards unless the test failed.
func startBench(t *testing.T) *bench {
	t.Helper()
	binDir := os.Getenv("BENCH_BIN_DIR")
	if binDir == "" {
		binDir = filepath.Join(envtestenv.Root(), "bin")
	}
	for _, b := range []string{"power-webhook", "power-agent"} {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			t.Fatalf("%s not built: run `make build` (or set BENCH_BIN_DIR): %v", b, err)
		}
	}
	pprof, err := envtestenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "power-scale-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sandbox folder %s; etcd's data under %s (%s)", dir, os.TempDir(), fsKind(os.TempDir()))
	start := time.Now()
	sb, err := sandbox.Start(t.Context(), sandbox.Options{
		Dir: dir, BinDir: binDir, Progress: logWriter{t},
		WebhookArgs: []string{"--pprof-bind-address", pprof},
	})
	if err != nil {
		t.Fatalf("start the sandbox: %v (files kept in %s)", err, dir)
	}
	t.Cleanup(func() {
		if err := sb.Stop(); err != nil {
			t.Errorf("stop the sandbox: %v", err)
		}
		if t.Failed() {
			t.Logf("logs kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	t.Logf("sandbox up in %s", time.Since(start).Round(100*time.Millisecond))
	cfg := rest.CopyConfig(sb.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := &bench{t: t, sb: sb, cs: cs, pprof: pprof}
	if b.apiserver, err = sb.APIServerPid(); err != nil {
		t.Fatal(err)
	}
	if b.etcd, err = sb.EtcdPid(); err != nil {
		t.Fatal(err)
	}
	return b
}

// logWriter sends each line of the sandbox's progress to t.Log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// fsKind says whether dir is on tmpfs.
func fsKind(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return err.Error()
	}
	if st.Type == 0x01021994 { // TMPFS_MAGIC
		return "tmpfs"
	}
	return "not tmpfs"
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.ReplaceAll(v, "_", ""))
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// --- what the cluster holds ---

// gpuNode is a GPU node as GPU feature discovery and node feature discovery
// label it: the labels are what the webhook's node cache holds of each node.
func gpuNode(name string, i int) *corev1.Node {
	zone := fmt.Sprintf("us-east-1%c", 'a'+rune(i%4))
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		policy.LabelGPUProduct:                           sandbox.GPUProduct,
		"kubernetes.io/hostname":                         name,
		"kubernetes.io/os":                               "linux",
		"kubernetes.io/arch":                             "amd64",
		"beta.kubernetes.io/os":                          "linux",
		"beta.kubernetes.io/arch":                        "amd64",
		"node.kubernetes.io/instance-type":               "p5.48xlarge",
		"topology.kubernetes.io/region":                  "us-east-1",
		"topology.kubernetes.io/zone":                    zone,
		"nvidia.com/gpu.present":                         "true",
		"nvidia.com/gpu.count":                           "8",
		"nvidia.com/gpu.memory":                          "81559",
		"nvidia.com/gpu.family":                          "hopper",
		"nvidia.com/gpu.machine":                         "p5.48xlarge",
		"nvidia.com/gpu.compute.major":                   "9",
		"nvidia.com/gpu.compute.minor":                   "0",
		"nvidia.com/cuda.driver.major":                   "550",
		"nvidia.com/cuda.driver.minor":                   "54",
		"nvidia.com/cuda.driver.rev":                     "15",
		"nvidia.com/cuda.runtime.major":                  "12",
		"nvidia.com/cuda.runtime.minor":                  "4",
		"nvidia.com/mig.capable":                         "true",
		"feature.node.kubernetes.io/pci-10de.present":    "true",
		"feature.node.kubernetes.io/kernel-version.full": "6.8.0-1015-aws",
	}}}
}

// gpuPod is a one-GPU worker asking for 500 W: both webhooks admit it.
func gpuPod(name, namespace, node string) *corev1.Pod {
	return testpod.MakePod(name, namespace).GPU(1).Limit("500").Label("app", "llm-worker").NodeName(node).Obj()
}

// otherPod is a pod with no GPU and no power annotation: the webhook
// configurations' matchConditions keep it from the webhook.
func otherPod(name, namespace, node string, i int) *corev1.Pod {
	return testpod.MakePod(name, namespace).Label("app", fmt.Sprintf("web-%02d", i%40)).Label("tier", "backend").
		Quantity(0, corev1.ResourceCPU, "100m").Quantity(0, corev1.ResourceMemory, "128Mi").NodeName(node).Obj()
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// --- driving load ---

// load is what parallel measured.
type load struct {
	what      string
	n         int
	elapsed   time.Duration
	latencies []time.Duration // per object, retries included
	retries   int64
	loadStart string
	loadEnd   string
}

func (l load) rate() float64 { return float64(l.n) / l.elapsed.Seconds() }

// pct is the p-th quantile (0..1) of the latencies.
func (l load) pct(p float64) time.Duration {
	if len(l.latencies) == 0 {
		return 0
	}
	s := slices.Clone(l.latencies)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1)+0.5)]
}

// parallel calls create(i) for every i in [0, n) from workers goroutines,
// logging progress every 5 s. A failed create is tried twice more (an
// AlreadyExists then means the earlier try was stored); the first error
// that persists fails the test.
func (b *bench) parallel(what string, n, workers int, create func(ctx context.Context, i int) error) load {
	b.t.Helper()
	ctx, cancel := context.WithCancelCause(b.t.Context())
	defer cancel(nil)
	l := load{what: what, n: n, latencies: make([]time.Duration, n), loadStart: loadavg()}
	var next, done, retries atomic.Int64
	start := time.Now()
	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		last, lastAt := int64(0), start
		for {
			select {
			case <-stopProgress:
				return
			case now := <-tick.C:
				d := done.Load()
				b.t.Logf("  %s: %d / %d created, %.0f/s (last 5 s), %.0f/s overall, load %s",
					what, d, n, float64(d-last)/now.Sub(lastAt).Seconds(), float64(d)/now.Sub(start).Seconds(), loadavg())
				last, lastAt = d, now
			}
		}
	}()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				var err error
				for attempt := 0; attempt < 3; attempt++ {
					err = create(ctx, i)
					if attempt > 0 && apierrors.IsAlreadyExists(err) {
						err = nil
					}
					if err == nil || apierrors.IsAlreadyExists(err) || ctx.Err() != nil {
						break
					}
					retries.Add(1)
				}
				l.latencies[i] = time.Since(t0)
				if err != nil {
					cancel(fmt.Errorf("%s %d: %w", what, i, err))
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	l.elapsed = time.Since(start)
	close(stopProgress)
	<-progressDone
	l.retries, l.loadEnd = retries.Load(), loadavg()
	if err := context.Cause(ctx); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return l
}

// poll checks cond every interval until it holds, logging what it saw every
// 10 s; it fails the test after timeout.
func (b *bench) poll(what string, interval, timeout time.Duration, cond func(ctx context.Context) (bool, string, error)) time.Duration {
	b.t.Helper()
	start, lastLog := time.Now(), time.Now()
	err := poll.Until(b.t.Context(), poll.Opts{Interval: interval, Timeout: timeout}, what, func(ctx context.Context) (bool, string, error) {
		ok, why, err := cond(ctx)
		if !ok && time.Since(lastLog) >= 10*time.Second {
			b.t.Logf("  waiting: %s (%s)", what, why)
			lastLog = time.Now()
		}
		return ok, why, err
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return time.Since(start)
}

// --- measuring a process ---

// loadavg is the machine's 1, 5 and 15 minute load averages.
func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

// cpuTime is the CPU a process has used, user and system, all threads.
func cpuTime(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, stat)
	}
	// Fields 14 and 15 of stat(5); f[0] is field 3.
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}

// procStatus reads the kB fields of /proc/<pid>/status, in bytes.
func procStatus(pid int) (map[string]int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[2] == "kB" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			out[strings.TrimSuffix(f[0], ":")] = kb << 10
		}
	}
	return out, nil
}

// cpus samples the CPU time of the webhook, the API server and etcd.
type cpus struct{ webhook, apiserver, etcd time.Duration }

func (b *bench) cpus() cpus {
	b.t.Helper()
	var c cpus
	var errs [3]error
	c.webhook, errs[0] = cpuTime(b.sb.Webhook.Pid())
	c.apiserver, errs[1] = cpuTime(b.apiserver)
	c.etcd, errs[2] = cpuTime(b.etcd)
	if err := errors.Join(errs[:]...); err != nil {
		b.t.Fatal(err)
	}
	return c
}

func (c cpus) sub(o cpus) cpus {
	return cpus{c.webhook - o.webhook, c.apiserver - o.apiserver, c.etcd - o.etcd}
}

// memory is the webhook's memory at one moment.
type memory struct {
	// From its /metrics after a forced GC: the live heap.
	HeapInuse, HeapAlloc, HeapObjects, ProcessRSS float64
	// From /proc/<pid>/status: VmRSS, RssAnon and VmHWM.
	RSS, AnonRSS, PeakRSS int64
	// APIServerRSS is the kube-apiserver's RSS, for scale.
	APIServerRSS int64
	Load         string
}

// webhookMemory forces two GCs through the webhook's pprof endpoint (a heap
// profile with gc=1 collects before it answers), then reads its /metrics and
// /proc/<pid>/status.
func (b *bench) webhookMemory() memory {
	b.t.Helper()
	for range 2 {
		if _, err := httpGet(b.t.Context(), "http://"+b.pprof+"/debug/pprof/heap?gc=1"); err != nil {
			b.t.Fatalf("force a GC in the webhook: %v", err)
		}
	}
	m := b.webhookMetrics()
	st, err := procStatus(b.sb.Webhook.Pid())
	if err != nil {
		b.t.Fatal(err)
	}
	api, err := procStatus(b.apiserver)
	if err != nil {
		b.t.Fatal(err)
	}
	return memory{
		APIServerRSS: api["VmRSS"],
		HeapInuse:    m.sum("go_memstats_heap_inuse_bytes"), HeapAlloc: m.sum("go_memstats_heap_alloc_bytes"),
		HeapObjects: m.sum("go_memstats_heap_objects"), ProcessRSS: m.sum("process_resident_memory_bytes"),
		RSS: st["VmRSS"], AnonRSS: st["RssAnon"], PeakRSS: st["VmHWM"], Load: loadavg(),
	}
}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return body, nil
}

// metrics are samples in Prometheus text format: series (name and labels as
// written) -> value.
type metrics map[string]float64

func (b *bench) webhookMetrics() metrics {
	b.t.Helper()
	body, err := httpGet(b.t.Context(), "http://"+b.sb.Webhook.MetricsAddr+"/metrics")
	if err != nil {
		b.t.Fatalf("scrape the webhook: %v", err)
	}
	return parseMetrics(string(body))
}

func parseMetrics(text string) metrics {
	m := metrics{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] += v
		}
	}
	return m
}

// sum adds the series of a metric whose labels contain every one of labels
// (`webhook="/mutate-pods"`).
func (m metrics) sum(name string, labels ...string) float64 {
	var s float64
	for series, v := range m {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(series, l)
		}
		if ok {
			s += v
		}
	}
	return s
}

// webhookPaths are the admission paths whose handler latency is reported.
var webhookPaths = []string{"/mutate-pods", "/validate-pods"}

// handlerMeans is the mean handler latency per webhook path between two
// scrapes, from controller-runtime's controller_runtime_webhook_latency_seconds.
func handlerMeans(before, after metrics) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, p := range webhookPaths {
		l := fmt.Sprintf("webhook=%q", p)
		n := after.sum("controller_runtime_webhook_latency_seconds_count", l) - before.sum("controller_runtime_webhook_latency_seconds_count", l)
		s := after.sum("controller_runtime_webhook_latency_seconds_sum", l) - before.sum("controller_runtime_webhook_latency_seconds_sum", l)
		if n > 0 {
			out[p] = time.Duration(s / n * float64(time.Second))
		}
	}
	return out
}

func handlerCounts(before, after metrics) map[string]float64 {
	out := map[string]float64{}
	for _, p := range webhookPaths {
		l := fmt.Sprintf("webhook=%q", p)
		out[p] = after.sum("controller_runtime_webhook_latency_seconds_count", l) - before.sum("controller_runtime_webhook_latency_seconds_count", l)
	}
	return out
}

// --- formatting ---

func mib(bytes float64) string { return fmt.Sprintf("%.1f MiB", bytes/(1<<20)) }

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// repoPath resolves a relative path from the environment against the
// repository root, where make runs (go test runs in the package's folder).
func repoPath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(envtestenv.Root(), p)
}

// writeReport writes the report to the file named by env, if set: as JSON
// when its name ends in .json, else the markdown.
func writeReport(t *testing.T, env, markdown string, data any) {
	t.Helper()
	path := repoPath(os.Getenv(env))
	if path == "" {
		return
	}
	out := []byte(markdown)
	if strings.HasSuffix(path, ".json") {
		var err error
		if out, err = json.MarshalIndent(data, "", "  "); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report written to %s", path)
}
