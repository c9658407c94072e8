package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's Prometheus metrics. GPU UUIDs are bounded per node,
// so they may be labels; pod names never are.
type Metrics struct {
	requested, applied, enforced, current, defaults, minimum, maximum, draw *prometheus.GaugeVec

	writes, failures, clamps, conflicts, repairs, restores, adoptions, unallocated, holds *prometheus.CounterVec

	ledgerCorrupt, frozen prometheus.Counter
	duration              prometheus.Histogram
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
	}
	reg.MustRegister(m.requested, m.applied, m.current, m.enforced, m.defaults, m.minimum, m.maximum, m.draw,
		m.writes, m.failures, m.clamps, m.conflicts, m.repairs, m.restores, m.adoptions, m.unallocated, m.holds,
		m.frozen, m.ledgerCorrupt, m.duration)
	return m
}

func (m *Metrics) observe(r GPUReport, applied, draw float64, conflict bool) {
	if m == nil {
		return
	}
	g := r.UUID
	w := func(mw int64) float64 { return float64(mw) / 1000 }
	l := r.Limits
	if r.Action != ActionError {
		m.current.WithLabelValues(g).Set(w(int64(l.Current)))
		m.enforced.WithLabelValues(g).Set(w(int64(l.Enforced)))
		m.defaults.WithLabelValues(g).Set(w(int64(l.Default)))
		m.minimum.WithLabelValues(g).Set(w(int64(l.Min)))
		m.maximum.WithLabelValues(g).Set(w(int64(l.Max)))
	}
	requested := 0.0
	if r.Action != ActionRestore && r.Action != ActionForget {
		requested = w(int64(r.Desired))
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

func (m *Metrics) reconciled(d time.Duration) {
	if m != nil {
		m.duration.Observe(d.Seconds())
	}
}
