// Package webhook serves the power admission webhooks: its own AdmissionReview
// reader (review.go, one streaming pass), the pod decoder (decode.go), the
// mutating and validating handlers that ask pkg/policy for the verdict and
// answer with a denial or the smallest JSON patch, and the guards of the
// subresources and bindings that could change a pod's power annotations. It
// also holds the GPUPowerBudget ledger (budgets.go: reservations batched into
// resourceVersion-checked status writes, forward.go: forwarding to the writer
// replica), the budget reconciler (reconciler.go, woken by pkg/podindex), the
// budget spec validator, client-certificate authentication of the API server,
// the node index (GPU products by node), the cache transforms and the metrics.
package webhook
