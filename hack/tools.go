//go:build tools

// Package hack pins the Kubernetes commands that hack/build-k8s.sh builds, so
// `go mod tidy` keeps them in go.mod.
package hack

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
