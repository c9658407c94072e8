// Package e2e_test installs both manifest folders, unchanged, with kubectl
// onto a real API server where cert-manager's own controllers and cainjector
// run, and checks what an operator would check after `kubectl apply`.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/dynamo-power/gpu-power/test/e2e/certmanager"
	"github.com/dynamo-power/gpu-power/test/envtestenv"
	"github.com/dynamo-power/gpu-power/test/testdeploy"
)

var (
	k8s        client.Client
	kubeconfig string
)

func TestMain(m *testing.M) { envtestenv.Main(m, "e2e", setup) }

func setup(m *testing.M) (int, error) {
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return 0, err
	}
	cmCRDs, err := certmanager.CRDDir()
	if err != nil {
		return 0, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		// Only cert-manager's CRDs are preinstalled, as on a cluster that has
		// cert-manager; ours come with `kubectl apply -f deploy/webhook/`.
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: []string{cmCRDs}, ErrorIfPathMissing: true},
	}
	cfg, err := env.Start()
	if err != nil {
		return 0, fmt.Errorf("start API server: %w", err)
	}
	defer func() { _ = env.Stop() }()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return 0, err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "power-e2e-")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	if kubeconfig, err = envtestenv.WriteKubeconfig(env, dir, "operator"); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := certmanager.Start(ctx, kubeconfig, cfg); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

func kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	bin, err := envtestenv.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out.String())
	}
	return out.String()
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	envtestenv.Eventually(t, 2*time.Minute, what, cond)
}

// TestInstallWithKubectl applies both folders as the README says and checks
// that cert-manager issued the serving certificate from the CA chain and
// injected the CA into both webhook configurations.
func TestInstallWithKubectl(t *testing.T) { install(t) }

// install applies both folders (idempotent, as kubectl apply is) and waits
// until cert-manager has done its part.
func install(t *testing.T) {
	t.Helper()
	kubectl(t, "", "apply", "-f", testdeploy.WebhookDir())
	kubectl(t, "", "apply", "-f", testdeploy.AgentFile())

	eventually(t, "the serving Certificate is Ready", func() (bool, string) {
		c := &unstructured.Unstructured{}
		c.SetAPIVersion("cert-manager.io/v1")
		c.SetKind("Certificate")
		if err := k8s.Get(t.Context(), types.NamespacedName{Namespace: "dynamo-system", Name: "power-webhook-serving"}, c); err != nil {
			return false, err.Error()
		}
		conds, _, _ := unstructured.NestedSlice(c.Object, "status", "conditions")
		for _, x := range conds {
			if m, ok := x.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("conditions %v", conds)
	})

	var secret corev1.Secret
	if err := k8s.Get(t.Context(), types.NamespacedName{Namespace: "dynamo-system", Name: "power-webhook-serving-cert"}, &secret); err != nil {
		t.Fatal(err)
	}
	ca := secret.Data["ca.crt"]
	leaf := parseCert(t, secret.Data["tls.crt"])
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "power-webhook.dynamo-system.svc"}); err != nil {
		t.Errorf("the serving certificate does not verify against the CA for the Service's name: %v", err)
	}
	if leaf.IsCA || bytes.Equal(leaf.RawIssuer, leaf.RawSubject) {
		t.Error("the serving certificate must be a leaf issued by the CA, not self-signed")
	}

	eventually(t, "cainjector put the CA into both webhook configurations", func() (bool, string) {
		var mut admissionv1.MutatingWebhookConfiguration
		var val admissionv1.ValidatingWebhookConfiguration
		if err := k8s.Get(t.Context(), types.NamespacedName{Name: "power-webhook"}, &mut); err != nil {
			return false, err.Error()
		}
		if err := k8s.Get(t.Context(), types.NamespacedName{Name: "power-webhook"}, &val); err != nil {
			return false, err.Error()
		}
		ok := bytes.Equal(mut.Webhooks[0].ClientConfig.CABundle, ca) && bytes.Equal(val.Webhooks[0].ClientConfig.CABundle, ca)
		return ok, fmt.Sprintf("mutating caBundle %d bytes, validating %d bytes, CA %d bytes",
			len(mut.Webhooks[0].ClientConfig.CABundle), len(val.Webhooks[0].ClientConfig.CABundle), len(ca))
	})

	// The operator's next step: a budget from the shipped example.
	example, err := testdeploy.ExampleBudget()
	if err != nil {
		t.Fatal(err)
	}
	kubectl(t, string(example), "apply", "-f", "-")
	out := kubectl(t, "", "get", "gpupowerbudgets")
	if !bytes.Contains([]byte(out), []byte("TOTAL")) || !bytes.Contains([]byte(out), []byte("example")) {
		t.Errorf("kubectl get gpupowerbudgets:\n%s", out)
	}
}

func parseCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
