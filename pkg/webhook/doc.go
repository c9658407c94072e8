// Package webhook serves the power admission webhooks: its own AdmissionReview
// reader (review.go, one streaming pass), the pod decoder (decode.go), the
// mutating and validating handlers that ask pkg/policy for the verdict and
// pkg/budget for the budgets' charge, answering with a denial or the smallest
// JSON patch (handler.go), the guards of the subresources and bindings that
// could change a pod's power annotations, what a pod's ResourceClaims ask
// (claims.go: ClaimResolver), the GPUPowerBudget validating webhook
// (budgetvalidator.go), the ResourceClaim validating webhook that holds a
// claim made again to the pods admitted against it (claimvalidator.go),
// client-certificate authentication of the API
// server (clientauth.go: ClientAuth, NewServer), the admission metrics
// (metrics.go), and Setup (setup.go), which wires the caches, the indexes
// (pkg/nodeindex, pkg/podindex), the handlers and budget enforcement
// (pkg/budget) into a controller-runtime manager, with the manager's options
// beside it: CacheOptions (and its namespace transform, TrimNamespace),
// ClientOptions and ServerOptions.
package webhook
