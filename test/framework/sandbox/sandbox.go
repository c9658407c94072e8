// Package sandbox runs the whole system on one machine with no cluster and no
// GPU: a real kube-apiserver and etcd, cert-manager's own controllers and
// cainjector, both manifest folders applied unchanged with kubectl, the
// power-webhook binary serving the certificate cert-manager issued, and the
// power-agent binary on simulated H100s beside a simulated kubelet. The e2e
// tests, `make demo` and `make up` all run on it.
//
// It holds Start (Options, Sandbox: Kubectl, GPUs and GPUsOf, Metric,
// ServedCertificate, the API server's and etcd's pids, Stop), the processes
// it runs (Process, and Binaries, which builds them), ParseCertificate, and
// the planner's day `make demo` plays (Planner, Step, WorkerPod).
//
// The only overlay on the shipped manifests: both webhook configurations call
// the webhook at a local URL instead of through the Service, and the serving
// Certificate also names 127.0.0.1. The API server authenticates to the
// webhook with a client certificate (docs/install.md, "Authenticating the API
// server"): the webhook runs with --client-ca-file and --client-name.
package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
	"github.com/dynamo-power/gpu-power/test/framework/certmanager"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// The sandbox's names: what the shipped manifests create, and its one node.
const (
	Namespace      = "dynamo-system"
	CertificateRef = "power-webhook-serving"
	SecretName     = "power-webhook-serving-cert"
	// StampKeySecret holds the key both binaries sign and verify stamps with.
	StampKeySecret = "power-stamp-key"
	NodeName       = "h100-node"
	GPUProduct     = "NVIDIA-H100-80GB-HBM3"
	GPUCount       = 8
)

// Options configure a sandbox.
type Options struct {
	// Dir receives everything the sandbox writes: kubeconfig, certificates,
	// the simulated GPUs' state, the ledger and the binaries' logs.
	Dir string
	// BinDir holds power-webhook and power-agent already built (`make
	// build`); empty builds them into Dir.
	BinDir string
	// Progress gets one line per step; nil discards them.
	Progress io.Writer
	// WebhookArgs are more flags for power-webhook, after the sandbox's own:
	// for example --pprof-bind-address 127.0.0.1:PORT for the load drivers
	// of test/scale.
	WebhookArgs []string
}

// Sandbox is a running system.
type Sandbox struct {
	Dir string
	// BinDir holds the power-webhook and power-agent binaries it runs.
	BinDir     string
	Kubeconfig string
	Config     *rest.Config
	Client     client.Client
	// NVMLState is the simulated GPUs' state file: the agent's --fake-nvml.
	NVMLState string
	// AgentStateDir is the agent's --state-dir (its ownership ledger), and
	// PodResourcesSocket the simulated kubelet's PodResources socket.
	AgentStateDir, PodResourcesSocket string
	// CertDir is the webhook's certificate folder, kept in step with the
	// serving Secret as the kubelet keeps a Secret volume.
	CertDir string
	// StampKeyDir holds the stamp key Secret, as both pods mount it; its
	// tls.key is both binaries' --stamp-key-file.
	StampKeyDir string
	// WebhookURL is where both webhook configurations send admissions.
	WebhookURL string
	// APIServerAuth is the API server's client certificate for the webhook,
	// its CA (the webhook's --client-ca-file) and admission configuration.
	APIServerAuth  admissionauth.Files
	Webhook, Agent *Process

	kubelet *kubelet
	// env is the API server and etcd, for finding their processes.
	env *envtest.Environment
	// webhookArgs are Options.WebhookArgs.
	webhookArgs []string
	// certManagerLog is the file cert-manager's controllers log to.
	certManagerLog string
	progress       io.Writer
	cancel         context.CancelFunc
	cleanups       []func() error
	// failures collects what the background loops (secret volume, kubelet)
	// could not do; Err reports them.
	failures chan error
}

// Start brings everything up and returns once both binaries are ready. On
// error, what was started is stopped again.
func Start(ctx context.Context, o Options) (s *Sandbox, err error) {
	if o.Dir == "" {
		return nil, errors.New("sandbox: Options.Dir is required")
	}
	bg, cancel := context.WithCancel(context.Background())
	s = &Sandbox{
		Dir: o.Dir, NVMLState: filepath.Join(o.Dir, "nvml.json"), CertDir: filepath.Join(o.Dir, "webhook-certs"),
		AgentStateDir: filepath.Join(o.Dir, "agent-state"), StampKeyDir: filepath.Join(o.Dir, "stamp-key"),
		progress: o.Progress, cancel: cancel, failures: make(chan error, 16),
		webhookArgs: o.WebhookArgs,
	}
	if s.progress == nil {
		s.progress = io.Discard
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Stop())
			s = nil
		}
	}()
	s.BinDir = o.BinDir
	if s.BinDir == "" {
		s.BinDir = filepath.Join(o.Dir, "bin")
		s.step("Building power-webhook and power-agent into %s", s.BinDir)
		if err := Binaries(ctx, s.BinDir); err != nil {
			return s, err
		}
	}
	// The webhook's URL is fixed first: the API server's admission
	// kubeconfig names it.
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		return s, err
	}
	s.WebhookURL = "https://" + addr
	if s.APIServerAuth, err = admissionauth.Write(filepath.Join(s.Dir, "apiserver-webhook-client"), addr, admissionauth.ServiceHost); err != nil {
		return s, err
	}
	if err := s.startAPIServer(bg); err != nil {
		return s, err
	}
	if err := s.install(ctx); err != nil {
		return s, err
	}
	if err := s.startWebhook(ctx, bg); err != nil {
		return s, err
	}
	if err := s.startAgent(ctx, bg); err != nil {
		return s, err
	}
	return s, nil
}

func (s *Sandbox) step(format string, args ...any) {
	_, _ = fmt.Fprintf(s.progress, "==> "+format+"\n", args...)
}

func (s *Sandbox) fail(err error) {
	select {
	case s.failures <- err:
	default:
	}
}

// Err returns the first failure of a background loop, if any.
func (s *Sandbox) Err() error {
	select {
	case err := <-s.failures:
		return err
	default:
		return nil
	}
}

// Stop stops the binaries (SIGTERM, as on a pod's deletion), cert-manager,
// the API server and etcd. It keeps Dir.
func (s *Sandbox) Stop() error {
	var errs []error
	for _, p := range []*Process{s.Agent, s.Webhook} {
		if p != nil {
			errs = append(errs, p.Stop(time.Minute))
		}
	}
	s.cancel()
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanups[i]())
	}
	return errors.Join(errs...)
}

func (s *Sandbox) startAPIServer(bg context.Context) error {
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return err
	}
	cmCRDs, err := certmanager.CRDDir()
	if err != nil {
		return err
	}
	version, err := envtestenv.K8sVersion()
	if err != nil {
		return err
	}
	s.step("Starting etcd and kube-apiserver v%s (built from Go modules in %s)", version, assets)
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		// Only cert-manager's CRDs are preinstalled, as on a cluster that has
		// cert-manager; ours come with `kubectl apply -f deploy/webhook/`.
		CRDInstallOptions: envtest.CRDInstallOptions{Paths: []string{cmCRDs}, ErrorIfPathMissing: true},
	}
	env.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", s.APIServerAuth.AdmissionConfig)
	if s.Config, err = env.Start(); err != nil {
		return fmt.Errorf("start API server: %w", err)
	}
	s.cleanups = append(s.cleanups, env.Stop)
	s.env = env
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cmapi.AddToScheme, powerv1alpha1.AddToScheme} {
		if err := add(scheme); err != nil {
			return err
		}
	}
	if s.Client, err = client.New(s.Config, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	if s.Kubeconfig, err = envtestenv.WriteKubeconfig(env, s.Dir, "operator"); err != nil {
		return err
	}
	// cert-manager's controllers run in this process and log through klog and
	// controller-runtime: every line to a file, so the narrative stays
	// readable. Through a logger rather than klog's own file output, which
	// also copies errors to stderr: while the certificate is being issued
	// the cainjector logs the Secret it cannot find yet, which is no failure.
	// A real failure shows as a wait that never ends, with the log's errors.
	logFile, err := os.Create(filepath.Join(s.Dir, "cert-manager.log"))
	if err != nil {
		return err
	}
	s.cleanups = append(s.cleanups, logFile.Close)
	s.certManagerLog = logFile.Name()
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(logFile)))
	klog.SetLogger(logger)
	ctrllog.SetLogger(logger)
	s.step("Starting cert-manager v1.21.2's controllers and cainjector (log: %s)", logFile.Name())
	return certmanager.Start(bg, s.Kubeconfig, s.Config)
}

// StampKeyFile is the key file both binaries are given.
func (s *Sandbox) StampKeyFile() string { return filepath.Join(s.StampKeyDir, "tls.key") }

// Kubectl runs kubectl against the sandbox with stdin and returns its
// combined output.
func (s *Sandbox) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	k, err := envtestenv.KubectlFor(s.Kubeconfig)
	if err != nil {
		return "", err
	}
	return k.Run(ctx, stdin, args...)
}

// install applies both folders as the README says and waits for
// cert-manager to issue the serving certificate and inject its CA.
func (s *Sandbox) install(ctx context.Context) error {
	for _, path := range []string{testdeploy.WebhookDir(), testdeploy.AgentFile()} {
		s.step("kubectl apply -f %s", strings.TrimPrefix(path, envtestenv.Root()+"/"))
		out, err := s.Kubectl(ctx, "", "apply", "-f", path)
		if err != nil {
			return err
		}
		_, _ = io.WriteString(s.progress, indent(out))
	}
	s.step("Waiting for cert-manager to issue the serving certificate and inject its CA")
	err := s.waitFor(ctx, "the serving Certificate is Ready", s.certificateReady)
	if err == nil {
		err = s.waitFor(ctx, "cainjector put the CA into both webhook configurations", s.caInjected)
	}
	if err != nil {
		return fmt.Errorf("%w\ncert-manager's last errors (%s):\n%s", err, s.certManagerLog, indent(lastErrors(s.certManagerLog, 10)))
	}
	return nil
}

// lastErrors returns the last n error lines of a klog-format log.
func lastErrors(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var errs []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "E") {
			errs = append(errs, line)
		}
	}
	if len(errs) == 0 {
		return "(none)"
	}
	return strings.Join(errs[max(0, len(errs)-n):], "\n")
}

func (s *Sandbox) certificateReady(ctx context.Context) (bool, string, error) {
	var c cmapi.Certificate
	if err := s.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: CertificateRef}, &c); err != nil {
		return false, err.Error(), nil
	}
	for _, cond := range c.Status.Conditions {
		if cond.Type == cmapi.CertificateConditionReady {
			return cond.Status == "True" && cond.ObservedGeneration == c.Generation, cond.Message, nil
		}
	}
	return false, "no Ready condition yet", nil
}

func (s *Sandbox) caInjected(ctx context.Context) (bool, string, error) {
	var secret corev1.Secret
	if err := s.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: SecretName}, &secret); err != nil {
		return false, err.Error(), nil
	}
	mut, val, err := s.webhookConfigurations(ctx)
	if err != nil {
		return false, err.Error(), nil
	}
	ca := secret.Data["ca.crt"]
	injected := 0
	bundles := caBundles(mut, val)
	for _, b := range bundles {
		if len(ca) > 0 && bytes.Equal(b, ca) {
			injected++
		}
	}
	return injected == len(bundles), fmt.Sprintf("%d of %d webhooks carry the CA (%d bytes)", injected, len(bundles), len(ca)), nil
}

// waitFor polls cond for up to two minutes: the sandbox's conditions are
// controllers' work, which takes seconds on a busy machine.
func (s *Sandbox) waitFor(ctx context.Context, what string, cond poll.Cond) error {
	return poll.Until(ctx, poll.Opts{Interval: 100 * time.Millisecond, Timeout: 2 * time.Minute}, what, cond)
}

// startWebhook applies the overlay (127.0.0.1 in the Certificate, a local
// URL in both configurations), keeps the cert folder in step with the
// Secret, and runs the webhook binary on it.
func (s *Sandbox) startWebhook(ctx, bg context.Context) error {
	s.step("Overlay: the serving Certificate also names 127.0.0.1; waiting for cert-manager to reissue it")
	cert := &cmapi.Certificate{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: CertificateRef}}
	if err := s.Client.Patch(ctx, cert, client.RawPatch(types.MergePatchType, []byte(`{"spec":{"ipAddresses":["127.0.0.1"]}}`))); err != nil {
		return fmt.Errorf("overlay the Certificate: %w", err)
	}
	if err := s.waitFor(ctx, "a serving certificate for 127.0.0.1", s.servesLoopback); err != nil {
		return err
	}
	vol := &secretVolume{c: s.Client, secret: types.NamespacedName{Namespace: Namespace, Name: SecretName}, dir: s.CertDir}
	if err := vol.sync(ctx); err != nil {
		return err
	}
	go every(bg, 500*time.Millisecond, vol.sync, s.fail)
	stampKey := &secretVolume{c: s.Client, secret: types.NamespacedName{Namespace: Namespace, Name: StampKeySecret}, dir: s.StampKeyDir}
	if err := s.waitFor(ctx, "cert-manager issued the stamp key", func(ctx context.Context) (bool, string, error) {
		err := stampKey.sync(ctx)
		return err == nil, fmt.Sprint(err), nil
	}); err != nil {
		return err
	}

	port := s.WebhookURL[strings.LastIndex(s.WebhookURL, ":")+1:]
	args := append([]string{"--cert-dir", s.CertDir, "--webhook-port", port, "--stamp-key-file", s.StampKeyFile(),
		"--client-ca-file", s.APIServerAuth.CA, "--client-name", admissionauth.ClientName}, s.webhookArgs...)
	// The process gets what the Deployment's container would: GOMAXPROCS
	// from its CPU request.
	env, err := testdeploy.WebhookResourceEnv()
	if err != nil {
		return err
	}
	if s.Webhook, err = newProcess("webhook", s.BinDir, s.Dir, append(env, "KUBECONFIG="+s.Kubeconfig, "POD_NAMESPACE="+Namespace), args...); err != nil {
		return err
	}
	s.step("Starting power-webhook on %s, for the API server's client certificate only (log: %s)", s.WebhookURL, s.Webhook.Log)
	if err := s.Webhook.Start(ctx); err != nil {
		return err
	}
	s.step("Overlay: both webhook configurations call %s instead of the Service", s.WebhookURL)
	mut, val, err := s.webhookConfigurations(ctx)
	if err != nil {
		return err
	}
	for _, w := range []struct {
		obj   client.Object
		paths []*string
	}{
		{mut, servicePaths(mut.Webhooks, func(w admissionv1.MutatingWebhook) admissionv1.WebhookClientConfig { return w.ClientConfig })},
		{val, servicePaths(val.Webhooks, func(w admissionv1.ValidatingWebhook) admissionv1.WebhookClientConfig { return w.ClientConfig })},
	} {
		var ops []string
		for i, path := range w.paths {
			if path == nil {
				return fmt.Errorf("%s webhook %d calls no Service path", w.obj.GetName(), i)
			}
			ops = append(ops, fmt.Sprintf(`{"op":"remove","path":"/webhooks/%d/clientConfig/service"},{"op":"add","path":"/webhooks/%d/clientConfig/url","value":%q}`, i, i, s.WebhookURL+*path))
		}
		patch := "[" + strings.Join(ops, ",") + "]"
		if err := s.Client.Patch(ctx, w.obj, client.RawPatch(types.JSONPatchType, []byte(patch))); err != nil {
			return fmt.Errorf("point the webhook configuration at %s: %w", s.WebhookURL, err)
		}
	}
	return nil
}

func (s *Sandbox) webhookConfigurations(ctx context.Context) (*admissionv1.MutatingWebhookConfiguration, *admissionv1.ValidatingWebhookConfiguration, error) {
	var mut admissionv1.MutatingWebhookConfiguration
	var val admissionv1.ValidatingWebhookConfiguration
	if err := s.Client.Get(ctx, types.NamespacedName{Name: "power-webhook"}, &mut); err != nil {
		return nil, nil, err
	}
	if err := s.Client.Get(ctx, types.NamespacedName{Name: "power-webhook"}, &val); err != nil {
		return nil, nil, err
	}
	return &mut, &val, nil
}

// servicePaths lists the Service path each webhook calls (nil: none).
func servicePaths[W any](webhooks []W, config func(W) admissionv1.WebhookClientConfig) []*string {
	paths := make([]*string, len(webhooks))
	for i, w := range webhooks {
		if svc := config(w).Service; svc != nil {
			paths[i] = svc.Path
		}
	}
	return paths
}

// caBundles are the CA bundles of every webhook of both configurations.
func caBundles(mut *admissionv1.MutatingWebhookConfiguration, val *admissionv1.ValidatingWebhookConfiguration) [][]byte {
	var out [][]byte
	for _, w := range mut.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	for _, w := range val.Webhooks {
		out = append(out, w.ClientConfig.CABundle)
	}
	return out
}

func (s *Sandbox) servesLoopback(ctx context.Context) (bool, string, error) {
	var secret corev1.Secret
	if err := s.Client.Get(ctx, types.NamespacedName{Namespace: Namespace, Name: SecretName}, &secret); err != nil {
		return false, err.Error(), nil
	}
	leaf, err := ParseCertificate(secret.Data["tls.crt"])
	if err != nil {
		return false, err.Error(), nil
	}
	for _, ip := range leaf.IPAddresses {
		if ip.String() == "127.0.0.1" {
			return true, "", nil
		}
	}
	return false, fmt.Sprintf("certificate for %v %v", leaf.DNSNames, leaf.IPAddresses), nil
}

// startAgent registers the node, creates its simulated GPUs and kubelet, and
// runs the agent binary on them.
func (s *Sandbox) startAgent(ctx, bg context.Context) error {
	s.step("Registering node %s with %d simulated %s GPUs (state: %s)", NodeName, GPUCount, GPUProduct, s.NVMLState)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: NodeName, Labels: map[string]string{
		policy.LabelGPUProduct: GPUProduct, "nvidia.com/gpu.present": "true",
	}}}
	if err := s.Client.Create(ctx, node); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	node.Status.Capacity = corev1.ResourceList{policy.ResourceGPU: *resourceQuantity(GPUCount)}
	node.Status.Allocatable = node.Status.Capacity
	if err := s.Client.Status().Update(ctx, node); err != nil {
		return fmt.Errorf("node status: %w", err)
	}
	gpus := nvmlfake.H100s(GPUCount)
	if err := nvmlfake.New(gpus...).PersistTo(s.NVMLState); err != nil {
		return err
	}
	server, stop, err := podresourcestest.Serve()
	if err != nil {
		return err
	}
	s.cleanups = append(s.cleanups, stop)
	s.PodResourcesSocket = server.Socket
	s.kubelet = &kubelet{c: s.Client, node: NodeName, server: server, alloc: map[types.UID]allocation{}}
	for _, g := range gpus {
		s.kubelet.gpus = append(s.kubelet.gpus, g.UUID)
	}
	go every(bg, 200*time.Millisecond, s.kubelet.sync, s.fail)

	if s.Agent, err = newProcess("agent", s.BinDir, s.Dir, []string{"KUBECONFIG=" + s.Kubeconfig, "POD_NAMESPACE=" + Namespace},
		"--node-name", NodeName, "--fake-nvml", s.NVMLState, "--state-dir", s.AgentStateDir,
		"--pod-resources-socket", server.Socket, "--stamp-key-file", s.StampKeyFile()); err != nil {
		return err
	}
	s.step("Starting power-agent for %s (log: %s)", NodeName, s.Agent.Log)
	return s.Agent.Start(ctx)
}

// GPUsOf returns the indexes of the simulated GPUs the kubelet gave a pod.
func (s *Sandbox) GPUsOf(namespace, name string) []int {
	return s.kubelet.GPUsOf(types.NamespacedName{Namespace: namespace, Name: name})
}

// GPUs reads the simulated GPUs' state as the hardware holds it now.
func (s *Sandbox) GPUs() ([]nvmlfake.GPU, error) {
	f, err := nvmlfake.NewFromFile(s.NVMLState)
	if err != nil {
		return nil, err
	}
	st, err := f.State()
	if err != nil {
		return nil, err
	}
	return st.Devices, nil
}

func indent(s string) string {
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ") + "\n"
}

func resourceQuantity(n int64) *resource.Quantity { return resource.NewQuantity(n, resource.DecimalSI) }
