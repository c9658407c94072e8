package webhook

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Metrics are the webhook's Prometheus metrics.
type Metrics struct {
	decisions *prometheus.CounterVec
	denials   *prometheus.CounterVec
	latency   *prometheus.HistogramVec

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

// Results of an admission, the values of the result label.
const (
	resultAllowed = "allowed"
	resultDenied  = "denied"
	resultError   = "error"
)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_admissions_total",
			Help: "Admission decisions on pods, by webhook (mutate, validate), operation (CREATE, UPDATE) and result (allowed, denied, error).",
		}, []string{"webhook", "operation", "result"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dynamo_power_webhook_denials_total",
			Help: "Pods denied, by webhook and reason: limit (the limit's grammar or range), stamp, signature, gpu-count, budget, write-path (pods/status, a binding), other.",
		}, []string{"webhook", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dynamo_power_webhook_admission_duration_seconds",
			Help: "Time the handler spent on one admission request, by webhook.",
			// 10 us to 5.2 s: the decision is sub-millisecond, a budget's
			// reservation waits for status writes, up to the webhooks'
			// timeouts (3 s, 5 s).
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 20),
		}, []string{"webhook"}),
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
	// Every decision series exists from the start, at 0: one that first
	// appears at 5 shows no increase, and five failed admissions would not
	// alert.
	for _, webhook := range []string{"mutate", "validate"} {
		for _, op := range []admissionv1.Operation{admissionv1.Create, admissionv1.Update} {
			for _, result := range []string{resultAllowed, resultDenied, resultError} {
				m.decisions.WithLabelValues(webhook, string(op), result)
			}
		}
	}
	for _, webhook := range []string{"mutate", "validate"} {
		for _, reason := range denialReasons {
			m.denials.WithLabelValues(webhook, reason)
		}
	}
	reg.MustRegister(m.decisions, m.denials, m.latency, m.budgetDenials, m.reserved, m.conflicts, m.retries, m.forwards,
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

// denialReasons are the values of the reason label (denialReason).
var denialReasons = []string{"limit", "stamp", "signature", "gpu-count", "budget", "write-path", "other"}

// denialReason names why a pod was denied, from the denial itself: the
// field of its first cause (the API server's own form of a 422), a 403 (a
// budget), or the write path a guard refused.
func denialReason(req admission.Request, resp admission.Response) string {
	switch {
	case req.SubResource != "" || req.Kind.Kind == "Binding":
		return "write-path"
	case resp.Result == nil:
		return "other"
	case resp.Result.Code == http.StatusForbidden:
		return "budget"
	case resp.Result.Details == nil || len(resp.Result.Details.Causes) == 0:
		return "other"
	}
	f := resp.Result.Details.Causes[0].Field
	switch {
	case strings.Contains(f, policy.AnnotationPowerLimitSignature):
		return "signature"
	case strings.Contains(f, policy.AnnotationPowerLimitValidated):
		return "stamp"
	case strings.Contains(f, policy.AnnotationPowerLimit):
		return "limit"
	case strings.Contains(f, "resources"):
		return "gpu-count"
	}
	return "other"
}

func (m *Metrics) observe(webhook string, req admission.Request, resp admission.Response, result string, start time.Time) {
	if m == nil {
		return
	}
	m.decisions.WithLabelValues(webhook, string(req.Operation), result).Inc()
	if result == resultDenied {
		m.denials.WithLabelValues(webhook, denialReason(req, resp)).Inc()
	}
	m.latency.WithLabelValues(webhook).Observe(time.Since(start).Seconds())
}
