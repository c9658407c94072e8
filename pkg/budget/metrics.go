package budget

import (
	"github.com/prometheus/client_golang/prometheus"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Metrics are the budgets' Prometheus metrics: the ledger's reservations,
// conflicts and forwards on every replica, and each budget's state as the
// reconciler, on the writer replica only, last wrote it.
type Metrics struct {
	budgetDenials *prometheus.CounterVec
	reserved      *prometheus.CounterVec
	conflicts     *prometheus.CounterVec
	retries       *prometheus.CounterVec
	forwards      *prometheus.CounterVec
	committed     *prometheus.GaugeVec
	total         *prometheus.GaugeVec
	available     *prometheus.GaugeVec
	pods          *prometheus.GaugeVec
	gpus          *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		budgetDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_budget_denials_total",
			Help: "Pods denied because a GPUPowerBudget was short, by budget.",
		}, []string{"budget"}),
		reserved: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_budget_reservations_total",
			Help: "Reservations written to a budget's status (in batches), by budget.",
		}, []string{"budget"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_budget_reservation_conflicts_total",
			Help: "Budget status updates that lost a resourceVersion race and were retried, by budget.",
		}, []string{"budget"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_budget_reservation_retries_total",
			Help: "Reservation batches that needed more than one write, by budget.",
		}, []string{"budget"}),
		forwards: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_budget_forwards_total",
			Help: "Reservations sent to the budget writer replica, by result (forwarded; fallback: written here because the writer did not answer).",
		}, []string{"result"}),
		committed: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_budget_committed_watts",
			Help: "GPU power committed to live pods and reservations, by budget, as last reconciled.",
		}, []string{"budget"}),
		total: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_budget_total_watts",
			Help: "The budget's totalWatts, by budget.",
		}, []string{"budget"}),
		available: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_budget_available_watts",
			Help: "GPU power a budget can still commit (total minus committed, never below zero), by budget, as last reconciled.",
		}, []string{"budget"}),
		pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_budget_pods",
			Help: "Live GPU pods a budget charges, by budget, as last reconciled.",
		}, []string{"budget"}),
		gpus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "dynamo_power_budget_gpus",
			Help: "GPUs of the live pods a budget charges, by budget, as last reconciled.",
		}, []string{"budget"}),
	}
	reg.MustRegister(m.budgetDenials, m.reserved, m.conflicts, m.retries, m.forwards,
		m.committed, m.total, m.available, m.pods, m.gpus)
	return m
}

func (m *Metrics) budgetDenied(short []policy.BudgetState) {
	if m == nil {
		return
	}
	for _, b := range short {
		m.budgetDenials.WithLabelValues(b.Name).Inc()
	}
}

func (m *Metrics) reservations(budget string, n, attempt int) {
	if m == nil {
		return
	}
	m.reserved.WithLabelValues(budget).Add(float64(n))
	if attempt > 0 {
		m.retries.WithLabelValues(budget).Inc()
	}
}

func (m *Metrics) reservationConflict(budget string) {
	if m != nil {
		m.conflicts.WithLabelValues(budget).Inc()
	}
}

// Results of a forward, the values of the result label.
const (
	forwardOK       = "forwarded"
	forwardFallback = "fallback"
)

func (m *Metrics) forwarded(result string) {
	if m != nil {
		m.forwards.WithLabelValues(result).Inc()
	}
}

// budgetState exports a budget as the reconciler, on the writer replica
// only, last wrote it: a sum over replicas counts each budget once.
func (m *Metrics) budgetState(budget string, total int64, st *powerv1alpha1.GPUPowerBudgetStatus) {
	if m != nil {
		m.committed.WithLabelValues(budget).Set(float64(st.CommittedWatts))
		m.total.WithLabelValues(budget).Set(float64(total))
		m.available.WithLabelValues(budget).Set(float64(st.AvailableWatts))
		m.pods.WithLabelValues(budget).Set(float64(st.Pods))
		m.gpus.WithLabelValues(budget).Set(float64(st.GPUs))
	}
}

func (m *Metrics) forgetBudget(budget string) {
	if m != nil {
		for _, g := range []*prometheus.GaugeVec{m.committed, m.total, m.available, m.pods, m.gpus} {
			g.DeleteLabelValues(budget)
		}
	}
}
