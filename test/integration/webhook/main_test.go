// Package webhook_test runs the power webhooks against a real kube-apiserver
// and etcd over TLS, installed from the same webhook configurations that
// deploy/webhook/ ships.
package webhook_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/envtestenv"
)

const testNamespace = "llm"

var (
	restConfig *rest.Config
	k8s        client.Client
	registry   = prometheus.NewRegistry()
	kubeconfig string // for kubectl
)

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration setup:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return 0, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join(envtestenv.Root(), "deploy", "webhook")},
		},
	}
	if restConfig, err = env.Start(); err != nil {
		return 0, fmt.Errorf("start API server: %w", err)
	}
	defer func() { _ = env.Stop() }()

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
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

	user, err := env.AddUser(envtest.User{Name: "planner", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return 0, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return 0, err
	}
	kubeconfig = filepath.Join(os.TempDir(), fmt.Sprintf("power-webhook-it-%d.kubeconfig", os.Getpid()))
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return 0, err
	}
	defer func() { _ = os.Remove(kubeconfig) }()

	probeAddr, err := freeAddr()
	if err != nil {
		return 0, err
	}
	wio := &env.WebhookInstallOptions
	mgr, err := ctrl.NewManager(restConfig, manager.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probeAddr,
		WebhookServer:          webhook.NewServer(powerwebhook.ServerOptions(wio.LocalServingHost, wio.LocalServingPort, wio.LocalServingCertDir)),
		Cache:                  powerwebhook.CacheOptions(),
	})
	if err != nil {
		return 0, err
	}
	decode, err := policy.ParseDefaultRule("role=decode=300")
	if err != nil {
		return 0, err
	}
	admit := &policy.Admission{Catalog: policy.DefaultCatalog(), UnknownProducts: policy.UnknownProductsDeny, Defaults: []policy.DefaultRule{decode}}
	if err := powerwebhook.Setup(ctx, mgr, admit, registry); err != nil {
		return 0, err
	}
	stopped := make(chan error, 1)
	go func() { stopped <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-stopped; err != nil {
			fmt.Fprintln(os.Stderr, "webhook manager:", err)
		}
	}()

	// Ready means the webhook server listens and the caches (the node index
	// included) have synced: the same probe the Deployment uses.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err != nil {
			return false, nil
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}); err != nil {
		return 0, fmt.Errorf("webhook never became ready: %w", err)
	}
	return m.Run(), nil
}

// createFixtures makes the test namespace and a cluster of H100 and L4 nodes.
func createFixtures(ctx context.Context) error {
	objs := []client.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}}
	for name, product := range map[string]string{
		"h100-0": "NVIDIA-H100-80GB-HBM3", "h100-1": "NVIDIA-H100-80GB-HBM3-SHARED", "l4-0": "NVIDIA-L4", "cpu-0": "",
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

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}
