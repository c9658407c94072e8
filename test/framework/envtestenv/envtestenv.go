// Package envtestenv is what the envtest and sandbox levels share: the
// Kubernetes version (K8sVersion, from hack/go.mod through
// hack/build-k8s.sh) and the test binaries `make envtest` builds from Go
// modules, kubectl among them (AssetsDir, Kubectl, KubectlFor), an admin
// kubeconfig (WriteKubeconfig), the repository root (Root), a TestMain
// wrapper (Main), a loopback port (FreeAddr) and a binary's readiness probe
// (Ready). Waiting for conditions is test/framework/poll.
package envtestenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/dynamo-power/gpu-power/test/framework/kubectl"
)

// K8sVersion is the Kubernetes version the binaries are built at, as
// hack/build-k8s.sh reads it from hack/go.mod (the one place it is written).
func K8sVersion() (string, error) {
	out, err := exec.Command(filepath.Join(Root(), "hack", "build-k8s.sh"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("hack/build-k8s.sh --version: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Root is the repository root.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// AssetsDir returns the folder with etcd, kube-apiserver and kubectl:
// KUBEBUILDER_ASSETS when set, else bin/k8s/<version>/. It fails with the
// command to run when the binaries are missing.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		version, err := K8sVersion()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(Root(), "bin", "k8s", version)
	}
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s not found in %s: run `make envtest` to build the test binaries: %w", b, dir, err)
		}
	}
	return dir, nil
}

// Kubectl returns the kubectl built beside the API server, or the one on PATH.
func Kubectl() (string, error) {
	if dir, err := AssetsDir(); err == nil {
		if p := filepath.Join(dir, "kubectl"); fileExists(p) {
			return p, nil
		}
	}
	p, err := exec.LookPath("kubectl")
	if err != nil {
		return "", fmt.Errorf("no kubectl: run `make envtest` to build it: %w", err)
	}
	return p, nil
}

// KubectlFor returns a runner of Kubectl's binary against kubeconfig.
func KubectlFor(kubeconfig string) (kubectl.Runner, error) {
	bin, err := Kubectl()
	if err != nil {
		return kubectl.Runner{}, err
	}
	return kubectl.Runner{Bin: bin, Kubeconfig: kubeconfig}, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// WriteKubeconfig adds a cluster-admin user to a started env and writes its
// kubeconfig to dir/kubeconfig, for kubectl and for processes under test.
func WriteKubeconfig(env *envtest.Environment, dir, user string) (string, error) {
	u, err := env.AddUser(envtest.User{Name: user, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return "", fmt.Errorf("add user %s: %w", user, err)
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return "", fmt.Errorf("kubeconfig of %s: %w", user, err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		return "", err
	}
	return path, nil
}
