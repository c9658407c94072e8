// Package endpoints serves the power agent's HTTP endpoints: NewRegistry
// gathers the agent's metrics with what controller-runtime exported beside
// them (Go runtime, process, client-go requests), MetricsHandler serves them
// at /metrics, ProbesHandler serves /healthz and /readyz as
// controller-runtime's manager does, and Serve listens on an address and
// serves a handler until its context ends.
package endpoints
