// Package webhook_test runs the power webhooks against a real kube-apiserver
// and etcd over TLS, installed from the same webhook configurations that
// deploy/webhook/ ships.
package webhook_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
)

const (
	testNamespace = "llm"
	// reservationTTL is short so the test of a pod never stored sees its
	// reservation expire.
	reservationTTL = 3 * time.Second
)

var (
	restConfig *rest.Config
	k8s        client.Client
	kubeconfig string // for kubectl
	webhooks   *fleet
	// clientAuth is what every replica runs with: the API server's client
	// CA, unless POWER_WEBHOOK_CLIENT_AUTH=off (to measure without it).
	clientAuth powerwebhook.ClientAuth
	// apiserverAuth is the API server's client certificate for the webhook.
	apiserverAuth admissionauth.Files
)

func TestMain(m *testing.M) { envtestenv.Main(m, "integration", run) }

func run(m *testing.M) (int, error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "power-webhook-it-")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	// The webhook address is fixed before the API server starts: its
	// admission kubeconfig names it.
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		return 0, err
	}
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths:            []string{filepath.Join(envtestenv.Root(), "deploy", "webhook")},
			LocalServingHost: host, LocalServingPort: port,
		},
		CRDInstallOptions: envtest.CRDInstallOptions{
			Paths:              []string{filepath.Join(envtestenv.Root(), "deploy", "webhook")},
			ErrorIfPathMissing: true,
		},
	}
	if os.Getenv("POWER_WEBHOOK_CLIENT_AUTH") != "off" {
		if apiserverAuth, err = admissionauth.Write(filepath.Join(tmp, "admission"), addr); err != nil {
			return 0, err
		}
		env.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", apiserverAuth.AdmissionConfig)
		clientAuth = powerwebhook.ClientAuth{CAFile: apiserverAuth.CA, Names: []string{admissionauth.ClientName}}
	}
	if restConfig, err = env.Start(); err != nil {
		return 0, fmt.Errorf("start API server: %w", err)
	}
	defer func() { _ = env.Stop() }()

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return 0, err
	}
	if err := powerv1alpha1.AddToScheme(scheme); err != nil {
		return 0, err
	}
	if k8s, err = client.New(restConfig, client.Options{Scheme: scheme}); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := createFixtures(ctx); err != nil {
		return 0, err
	}

	if kubeconfig, err = envtestenv.WriteKubeconfig(env, tmp, "planner"); err != nil {
		return 0, err
	}

	wio := &env.WebhookInstallOptions
	webhooks, err = newFleet(ctx, scheme, wio)
	if err != nil {
		return 0, err
	}
	defer webhooks.stopAll()
	// Three replicas behind one address, as behind a Service.
	for range 3 {
		if err := webhooks.start(); err != nil {
			return 0, err
		}
	}
	return m.Run(), nil
}

// createFixtures makes the test namespace and a cluster of H100 and L4 nodes.
func createFixtures(ctx context.Context) error {
	objs := []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dynamo-system"}},
	}
	for name, product := range map[string]string{
		"h100-0": "NVIDIA-H100-80GB-HBM3", "h100-1": "NVIDIA-H100-80GB-HBM3", "l4-0": "NVIDIA-L4", "cpu-0": "",
	} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if product != "" {
			n.Labels = map[string]string{policy.LabelGPUProduct: product}
		}
		objs = append(objs, n)
	}
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			return fmt.Errorf("create %s: %w", o.GetName(), err)
		}
	}
	return nil
}
