// Package events posts the power agent's events.k8s.io/v1 Events on pods:
// Recorder (NewRecorder) implements agent.EventRecorder, queues each Event
// without waiting for the API server, and Post sends them in order through
// the agent's client (pkg/agent/kube), again after a failure that may pass,
// a few times.
package events
