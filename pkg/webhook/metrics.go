package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
)

// Metrics are the webhook's Prometheus metrics.
type Metrics struct {
	decisions *prometheus.CounterVec
	latency   *prometheus.HistogramVec
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
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dynamo_power_webhook_admission_duration_seconds",
			Help: "Time the handler spent on one admission request, by webhook.",
			// 10 us to 80 ms: the work is sub-millisecond, so the buckets must be too.
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 14),
		}, []string{"webhook"}),
	}
	reg.MustRegister(m.decisions, m.latency)
	return m
}

func (m *Metrics) observe(webhook string, op admissionv1.Operation, result string, start time.Time) {
	if m == nil {
		return
	}
	m.decisions.WithLabelValues(webhook, string(op), result).Inc()
	m.latency.WithLabelValues(webhook).Observe(time.Since(start).Seconds())
}
