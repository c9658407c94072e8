package webhook_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
)

var benchRun atomic.Int64

// BenchmarkBudgetedAdmissions creates b.N GPU pods through the API server from
// 50 concurrent clients, each admitted by one of three webhook replicas that
// reserve its cost in one budget sized for three quarters of them. It reports
// admission requests per second, latency percentiles, and fails on any
// over-admission. "rate=100" offers 100 creates per second (the sustained load
// the budget must carry) and "rate=120" a little more, so that what is carried
// is not capped by what is offered; "rate=max" sends as fast as the clients
// can, to find the ceiling. Run it with a fixed count:
//
//	go test -run '^$' -bench BudgetedAdmissions -benchtime 2000x ./test/integration/webhook
func BenchmarkBudgetedAdmissions(b *testing.B) {
	b.Run("rate=100", func(b *testing.B) { admissionLoad(b, 100, true) })
	b.Run("rate=120", func(b *testing.B) { admissionLoad(b, 120, true) })
	b.Run("rate=max", func(b *testing.B) { admissionLoad(b, 0, true) })
	// The same loads with no budget selecting the namespace: what the API
	// server and the webhooks cost without reservations, on the same machine
	// in the same run.
	b.Run("rate=100/budget=none", func(b *testing.B) { admissionLoad(b, 100, false) })
	b.Run("rate=max/budget=none", func(b *testing.B) { admissionLoad(b, 0, false) })
}

// admissionLoad runs the load at rate creates per second (0: unpaced), into a
// namespace a budget selects when budgeted.
func admissionLoad(b *testing.B, rate float64, budgeted bool) {
	const (
		clients = 50
		cost    = 250
	)
	name := fmt.Sprintf("bench-%d", benchRun.Add(1))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if budgeted {
		ns.Labels = map[string]string{budgetLabel: name}
	}
	if err := k8s.Create(b.Context(), ns); err != nil {
		b.Fatal(err)
	}
	fit := int64(b.N)
	if budgeted {
		fit = int64(b.N) * 3 / 4
	}
	budget := &powerv1alpha1.GPUPowerBudget{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: powerv1alpha1.GPUPowerBudgetSpec{
			TotalWatts:        max(1, fit*cost),
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{budgetLabel: name}},
		},
	}
	if err := k8s.Create(b.Context(), budget); err != nil {
		b.Fatal(err)
	}
	// The reconciler would otherwise keep recomputing it in later runs.
	b.Cleanup(func() { _ = k8s.Delete(context.Background(), budget) })
	// Every replica must know the budget before the clock starts.
	if err := webhooks.waitUntilEverySees(b.Context(), budget); err != nil {
		b.Fatal(err)
	}

	// Creates are released at the offered rate; up to 50 are in flight.
	var tick <-chan time.Time
	if rate > 0 {
		ticker := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer ticker.Stop()
		tick = ticker.C
	}
	var next, admitted, denied atomic.Int64
	latencies := make([]time.Duration, b.N)
	var failed sync.Map
	countersBefore := budgetCounters(b)
	putsBefore := statusWrites(b)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				if tick != nil {
					<-tick
				}
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				t0 := time.Now()
				err := k8s.Create(b.Context(), gpuPod(fmt.Sprintf("p-%05d", i), name, 1, "250"))
				latencies[i] = time.Since(t0)
				switch {
				case err == nil:
					admitted.Add(1)
				case apierrors.IsForbidden(err):
					denied.Add(1)
				default:
					failed.Store(err.Error(), true)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	failed.Range(func(k, _ any) bool { b.Errorf("admission failed: %s", k); return true })
	if got := admitted.Load(); b.N > 1 && got != fit {
		b.Errorf("%d pods admitted; want exactly %d (total %d W / %d W)", got, fit, fit*cost, cost)
	}
	var after powerv1alpha1.GPUPowerBudget
	if err := k8s.Get(b.Context(), types.NamespacedName{Name: name}, &after); err == nil && after.Status.CommittedWatts > after.Spec.TotalWatts {
		b.Errorf("over-admission: %d W committed of %d W", after.Status.CommittedWatts, after.Spec.TotalWatts)
	}
	slices.Sort(latencies)
	pct := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "admissions/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.90), "p90-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(denied.Load()), "denied")
	for name, v := range budgetCounters(b) {
		b.ReportMetric(v-countersBefore[name], name)
	}
	// What bounds a budgeted admission: the status writes it waits for.
	if puts := statusWrites(b).minus(putsBefore); puts.count > 0 {
		b.ReportMetric(puts.count, "status-writes")
		b.ReportMetric(1000*puts.sum/puts.count, "status-write-mean-ms")
	}
	b.ReportMetric(0, "ns/op")
}

// budgetCounters sums the ledger's counters over the replicas: reservations
// written, status writes that conflicted, reservations forwarded to the
// writer replica and those written where they arrived because it did not
// answer.
func budgetCounters(b *testing.B) map[string]float64 {
	c := map[string]float64{}
	for _, reg := range webhooks.registries() {
		c["reserved"] += counterSum(b, reg, "dynamo_power_webhook_budget_reservations_total")
		c["conflicts"] += counterSum(b, reg, "dynamo_power_webhook_budget_reservation_conflicts_total")
		families, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() != "dynamo_power_webhook_budget_forwards_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				c[m.GetLabel()[0].GetValue()] += counterValue(m)
			}
		}
	}
	return c
}

// histogram is a count and a sum of a Prometheus histogram.
type histogram struct{ count, sum float64 }

func (h histogram) minus(o histogram) histogram { return histogram{h.count - o.count, h.sum - o.sum} }

// statusWrites reads, from the API server's own metrics, how many budget
// status updates it served and how long they took in all.
func statusWrites(b *testing.B) histogram {
	b.Helper()
	cs, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		b.Fatal(err)
	}
	raw, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	var h histogram
	for line := range strings.Lines(string(raw)) {
		if !strings.Contains(line, `resource="gpupowerbudgets"`) || !strings.Contains(line, `subresource="status"`) || !strings.Contains(line, `verb="PUT"`) {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		_, value, _ := strings.Cut(rest, "} ")
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch name {
		case "apiserver_request_duration_seconds_count":
			h.count += v
		case "apiserver_request_duration_seconds_sum":
			h.sum += v
		}
	}
	return h
}
