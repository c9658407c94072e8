package agent

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
)

// Metrics are the agent's Prometheus metrics. GPU UUIDs are bounded per node,
// so they may be labels. Pod names are labels of one series alone,
// dynamo_power_agent_gpu_pod_info, one per pod holding a GPU now (deleted
// when the pod no longer holds it), for joins; no other series carries them.
type Metrics struct {
	requested, applied, enforced, current, defaults, minimum, maximum, draw *prometheus.GaugeVec

	writes, failures, clamps, conflicts, repairs, restores, adoptions, unallocated, holds *prometheus.CounterVec

	ledgerCorrupt, frozen prometheus.Counter
	duration              prometheus.Histogram

	podInfo                            *prometheus.GaugeVec
	capped                             *cappedTime
	lastSuccess, interval, unvalidated prometheus.Gauge

	mu sync.Mutex
	// holding are the podInfo series set by the last reconcile.
	holding sets.Set[podOnGPU]
}

// podOnGPU is one dynamo_power_agent_gpu_pod_info series.
type podOnGPU struct{ gpu, namespace, pod string }

// cappedTime exports each GPU's NVML power-capped time as a counter: the
// driver keeps the count, so the value is NVML's own (in seconds), not one
// the agent adds up; when the driver's count starts again (a driver reload,
// a GPU reset) the series goes down, which Prometheus's rate() and
// increase() take for a counter reset.
type cappedTime struct {
	desc    *prometheus.Desc
	mu      sync.Mutex
	seconds map[string]float64
}

func (c *cappedTime) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *cappedTime) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for gpu, s := range c.seconds {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, s, gpu)
	}
}

func (c *cappedTime) set(gpu string, d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seconds[gpu] = d.Seconds()
}

func (c *cappedTime) forget(gpu string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.seconds, gpu)
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "dynamo_power_agent_gpu_" + name + "_watts", Help: help}, []string{"gpu"})
	}
	counter := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dynamo_power_agent_" + name + "_total", Help: help}, []string{"gpu"})
	}
	m := &Metrics{
		requested: gauge("requested", "Per-GPU limit the pods holding the GPU ask for (the lowest validated one); 0 when none."),
		applied:   gauge("applied", "Limit the agent last set and read back on a GPU it owns; 0 when it owns none."),
		current:   gauge("current", "The GPU's power management limit as NVML reports it."),
		enforced:  gauge("enforced", "The limit the GPU enforces (lowest of every limiter)."),
		defaults:  gauge("default", "The GPU's default power limit."),
		minimum:   gauge("min", "The lowest settable power limit."),
		maximum:   gauge("max", "The highest settable power limit."),
		draw:      gauge("draw", "The GPU's power draw."),
		writes:    counter("power_limit_writes", "Power limits written (cap, change, drift repair, restore), by GPU."),
		failures:  counter("power_limit_failures", "NVML failures while reading or writing a GPU's power limit, by GPU."),
		clamps:    counter("power_limit_clamps", "Limits clamped to the GPU's settable range before writing, by GPU."),
		conflicts: counter("power_limit_conflicts", "Reconciles that found pods asking different limits on one GPU, by GPU."),
		repairs:   counter("drift_repairs", "Limits changed by something else and set back, by GPU."),
		restores:  counter("power_limit_restores", "GPUs given back their original limit, by GPU."),
		adoptions: counter("power_limit_adoptions", "GPUs found, with no ledger on record, at a limit the agent recognised as its own, by GPU."),
		unallocated: counter("unallocated_processes",
			"Processes found on a GPU that kubelet did not allocate to their pod (they never set its cap), counted once each, by GPU."),
		holds: counter("power_limit_holds",
			"Reconciles that left a GPU as it was because kubelet's allocation of it could not be attributed, by GPU."),
		frozen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dynamo_power_agent_frozen_reconciles_total",
			Help: "Reconciles that changed no GPU because kubelet listed a device of a pod that could not be tied to a GPU.",
		}),
		ledgerCorrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dynamo_power_agent_ledger_corrupt_total",
			Help: "Ledgers refused at start (not a regular file, too large, unreadable, or invalid): the agent then owned no GPU.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "dynamo_power_agent_reconcile_duration_seconds",
			Help:    "Time one full reconcile of the node took.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 14), // 100 us to 0.8 s
		}),
		podInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_agent_gpu_pod_info",
			Help: "1 for each pod holding a GPU, as the last reconcile found it; gone when the pod no longer holds it. Join on gpu (and namespace, pod).",
		}, []string{"gpu", "namespace", "pod"}),
		capped: &cappedTime{
			desc: prometheus.NewDesc("dynamo_power_agent_gpu_power_capped_seconds_total",
				"Time the GPU was held below its application clocks by its power limit, as NVML counts it (power-policy violation time, "+
					"cumulative since the driver started counting); no series where NVML does not support it.",
				[]string{"gpu"}, nil),
			seconds: map[string]float64{},
		},
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dynamo_power_agent_last_successful_reconcile_timestamp_seconds",
			Help: "Unix time the last reconcile that completed without an error ended; 0 until one has.",
		}),
		interval: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dynamo_power_agent_reconcile_interval_seconds",
			Help: "The full reconcile period (--interval).",
		}),
		unvalidated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dynamo_power_agent_unvalidated_limit_pods",
			Help: "Pods holding a GPU on this node whose power-limit annotation is not enforced: not validated by the webhook, or not a limit.",
		}),
		holding: sets.New[podOnGPU](),
	}
	reg.MustRegister(m.requested, m.applied, m.current, m.enforced, m.defaults, m.minimum, m.maximum, m.draw,
		m.writes, m.failures, m.clamps, m.conflicts, m.repairs, m.restores, m.adoptions, m.unallocated, m.holds,
		m.frozen, m.ledgerCorrupt, m.duration,
		m.podInfo, m.capped, m.lastSuccess, m.interval, m.unvalidated)
	return m
}

func (m *Metrics) observe(r GPUReport, applied, draw float64, conflict bool) {
	if m == nil {
		return
	}
	g := r.UUID
	// Every counter of the GPU exists from its first cycle, at 0: a series
	// that first appears at 1 has no increase for rate() and increase() to
	// see, and a one-off drift repair would never alert.
	for _, c := range []*prometheus.CounterVec{m.writes, m.failures, m.clamps, m.conflicts, m.repairs, m.restores, m.adoptions, m.unallocated, m.holds} {
		c.WithLabelValues(g)
	}
	l := r.Limits
	if r.Action != ActionError {
		m.current.WithLabelValues(g).Set(l.Current.WattsExact())
		m.enforced.WithLabelValues(g).Set(l.Enforced.WattsExact())
		m.defaults.WithLabelValues(g).Set(l.Default.WattsExact())
		m.minimum.WithLabelValues(g).Set(l.Min.WattsExact())
		m.maximum.WithLabelValues(g).Set(l.Max.WattsExact())
	}
	requested := 0.0
	if r.Action != ActionRestore && r.Action != ActionForget {
		requested = r.Desired.WattsExact()
	}
	m.requested.WithLabelValues(g).Set(requested)
	m.applied.WithLabelValues(g).Set(applied)
	if draw >= 0 {
		m.draw.WithLabelValues(g).Set(draw)
	}
	if r.Err != nil {
		m.failures.WithLabelValues(g).Inc()
		return
	}
	switch r.Action {
	case ActionCap, ActionChange:
		m.writes.WithLabelValues(g).Inc()
	case ActionRepair:
		m.writes.WithLabelValues(g).Inc()
		m.repairs.WithLabelValues(g).Inc()
	case ActionRestore:
		m.writes.WithLabelValues(g).Inc()
		m.restores.WithLabelValues(g).Inc()
	case ActionAdopt:
		m.adoptions.WithLabelValues(g).Inc()
	case ActionHold:
		m.holds.WithLabelValues(g).Inc()
	}
	if r.Clamped && r.Action != ActionNone {
		m.clamps.WithLabelValues(g).Inc()
	}
	if conflict {
		m.conflicts.WithLabelValues(g).Inc()
	}
}

// LedgerCorrupt counts a ledger refused at start (OpenLedger's
// ErrCorruptLedger).
func (m *Metrics) LedgerCorrupt() {
	if m != nil {
		m.ledgerCorrupt.Inc()
	}
}

func (m *Metrics) strayFound(gpu string) {
	if m != nil {
		m.unallocated.WithLabelValues(gpu).Inc()
	}
}

func (m *Metrics) frozenReconcile() {
	if m != nil {
		m.frozen.Inc()
	}
}

// powerCapped records a GPU's NVML power-capped time: a GPU whose NVML does
// not keep it has no series; another error keeps the last value.
func (m *Metrics) powerCapped(gpu string, d time.Duration, err error) {
	switch {
	case m == nil:
	case err == nil:
		m.capped.set(gpu, d)
	case errors.Is(err, nvmlctl.ErrNotSupported):
		m.capped.forget(gpu)
	}
}

// holders sets the info series of the pods holding each GPU now and deletes
// those of pods that no longer hold it, and the count of pods whose limit
// is not enforced for want of validation.
func (m *Metrics) holders(now sets.Set[podOnGPU], unvalidated int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for h := range m.holding.Difference(now) {
		m.podInfo.DeleteLabelValues(h.gpu, h.namespace, h.pod)
	}
	for h := range now {
		m.podInfo.WithLabelValues(h.gpu, h.namespace, h.pod).Set(1)
	}
	m.holding = now
	m.unvalidated.Set(float64(unvalidated))
}

// cycleStarted exports the reconcile period.
func (m *Metrics) cycleStarted(interval time.Duration) {
	if m != nil {
		m.interval.Set(interval.Seconds())
	}
}

// cycleSucceeded records the end of a reconcile that completed without an
// error.
func (m *Metrics) cycleSucceeded(at time.Time) {
	if m != nil {
		m.lastSuccess.Set(float64(at.UnixNano()) / 1e9)
	}
}

func (m *Metrics) reconciled(d time.Duration) {
	if m != nil {
		m.duration.Observe(d.Seconds())
	}
}
