// Package kubetest stands in for the API server in tests of the power
// agent's client (pkg/agent/kube) and of what uses it: APIServer serves a
// handler over TLS and connects a kube.Client to it through a kubeconfig
// (Kubeconfig), as the agent connects; WriteStatus and WriteJSON answer as
// the API server answers.
package kubetest
