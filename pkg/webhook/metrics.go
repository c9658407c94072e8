package webhook

import (
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Metrics are the webhook's Prometheus metrics.
type Metrics struct {
	decisions *prometheus.CounterVec
	denials   *prometheus.CounterVec
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
	reg.MustRegister(m.decisions, m.denials, m.latency)
	return m
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
