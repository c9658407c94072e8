package e2e_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/envtestenv"
)

// TestInstalledWebhookAdmitsGPUPods runs the webhook binary with the
// certificate cert-manager issued, behind the installed webhook
// configurations, and the agent binary on simulated GPUs: a GPU pod is
// admitted, stamped and enforced, an over-limit one denied. The only overlay: the configurations call a local URL
// instead of the Service, and the Certificate also names 127.0.0.1.
func TestInstalledWebhookAdmitsGPUPods(t *testing.T) {
	install(t)
	certDir := servingCertForLocalhost(t)
	addr := startWebhook(t, certDir)
	pointWebhooksAt(t, "https://"+addr)

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "h100-node", Labels: map[string]string{policy.LabelGPUProduct: "NVIDIA-H100-80GB-HBM3"}}}
	if err := k8s.Create(t.Context(), node); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "inference"}}
	if err := k8s.Create(t.Context(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	gpus := startAgent(t, "h100-node")
	ok := testpod.MakePod("decode-0", "inference").GPU(2).NodeName("h100-node").Limit("250").Obj()
	if err := k8s.Create(t.Context(), ok); err != nil {
		t.Fatalf("GPU pod with a valid limit: %v", err)
	}
	if got := ok.Annotations[policy.AnnotationPowerLimitValidated]; got != "250" {
		t.Errorf("stamp %q; want 250", got)
	}
	// kubelet allocates two GPUs; the agent enforces the stamped limit on them.
	gpus.kubelet.SetPods(podresourcestest.Pod("inference", "decode-0", podresourcestest.Container("worker",
		podresourcestest.Devices(policy.ResourceGPU, nvmlctl.FakeUUID(0), nvmlctl.FakeUUID(1)))))
	for _, i := range []int{0, 1} {
		eventually(t, fmt.Sprintf("GPU %d capped at 250 W", i), func() (bool, string) {
			w := gpus.limitW(t, i)
			return w == 250, fmt.Sprintf("%d W", w)
		})
	}
	bad := testpod.MakePod("decode-1", "inference").GPU(4).NodeName("h100-node").Limit("900").Obj()
	err := k8s.Create(t.Context(), bad)
	if want := `above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("over-limit pod: %v; want a denial containing %q", err, want)
	}
}

// servingCertForLocalhost adds 127.0.0.1 to the serving Certificate, waits for
// cert-manager to reissue it, and writes the Secret's key pair to a folder,
// as the kubelet mounts it into the webhook's pod.
func servingCertForLocalhost(t *testing.T) string {
	t.Helper()
	cert := &unstructured.Unstructured{}
	cert.SetAPIVersion("cert-manager.io/v1")
	cert.SetKind("Certificate")
	cert.SetNamespace("dynamo-system")
	cert.SetName("power-webhook-serving")
	patch := []byte(`{"spec":{"ipAddresses":["127.0.0.1"]}}`)
	if err := k8s.Patch(t.Context(), cert, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	eventually(t, "a serving certificate for 127.0.0.1", func() (bool, string) {
		var s corev1.Secret
		if err := k8s.Get(t.Context(), types.NamespacedName{Namespace: "dynamo-system", Name: "power-webhook-serving-cert"}, &s); err != nil {
			return false, err.Error()
		}
		leaf := parseCert(t, s.Data["tls.crt"])
		if len(leaf.IPAddresses) == 0 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
			return false, fmt.Sprintf("IPs %v", leaf.IPAddresses)
		}
		for _, f := range []string{"tls.crt", "tls.key"} {
			if err := os.WriteFile(filepath.Join(dir, f), s.Data[f], 0o600); err != nil {
				return false, err.Error()
			}
		}
		return true, ""
	})
	return dir
}

// startWebhook runs the power-webhook binary and waits until it is ready.
func startWebhook(t *testing.T, certDir string) string {
	t.Helper()
	webhookAddr := freeAddr(t)
	_, port, _ := net.SplitHostPort(webhookAddr)
	startProcess(t, "webhook", []string{"CGO_ENABLED=0"}, "--cert-dir", certDir, "--webhook-port", port)
	return "127.0.0.1:" + port
}

// startProcess builds ./cmd/<name>, runs it against the test's API server
// until the test ends, and waits until its readiness probe passes. Its log is
// shown when the test fails.
func startProcess(t *testing.T, name string, buildEnv []string, args ...string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "power-"+name)
	build := exec.Command("go", "build", "-o", bin, "./cmd/"+name)
	build.Dir = envtestenv.Root()
	build.Env = append(os.Environ(), buildEnv...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build power-%s: %v\n%s", name, err, out)
	}
	probe := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, append(args, "--metrics-bind-address", "0", "--health-probe-bind-address", probe)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "POD_NAMESPACE=dynamo-system")
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			out, _ := os.ReadFile(log.Name())
			t.Logf("power-%s log:\n%s", name, out)
		}
	})
	eventually(t, "power-"+name+" is ready", func() (bool, string) { return envtestenv.Ready(probe) })
}

// pointWebhooksAt replaces the Service in both configurations' clientConfig
// with a URL, keeping the CA bundle cainjector put there.
func pointWebhooksAt(t *testing.T, base string) {
	t.Helper()
	for _, w := range []struct{ kind, path string }{
		{"MutatingWebhookConfiguration", "/mutate-pods"}, {"ValidatingWebhookConfiguration", "/validate-pods"},
	} {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("admissionregistration.k8s.io/v1")
		u.SetKind(w.kind)
		u.SetName("power-webhook")
		patch := fmt.Sprintf(`[{"op":"remove","path":"/webhooks/0/clientConfig/service"},{"op":"add","path":"/webhooks/0/clientConfig/url","value":%q}]`, base+w.path)
		if err := k8s.Patch(t.Context(), u, client.RawPatch(types.JSONPatchType, []byte(patch))); err != nil {
			t.Fatalf("point %s at %s: %v", w.kind, base, err)
		}
	}
}

// fakeNode is the agent's simulated hardware: NVML state and kubelet.
type fakeNode struct {
	nvml    string
	kubelet *podresourcestest.Server
}

func (n fakeNode) limitW(t *testing.T, i int) int64 {
	t.Helper()
	f, err := nvmlctl.NewFakeFromFile(n.nvml)
	if err != nil {
		t.Fatal(err)
	}
	g, err := f.GPU(nvmlctl.FakeUUID(i))
	if err != nil {
		t.Fatal(err)
	}
	return int64(g.Limit / 1000)
}

// startAgent runs the power-agent binary for a node of 8 simulated H100s
// (--fake-nvml) with a fake kubelet PodResources server.
func startAgent(t *testing.T, node string) fakeNode {
	t.Helper()
	dir := t.TempDir()
	n := fakeNode{nvml: filepath.Join(dir, "nvml.json"), kubelet: podresourcestest.Start(t)}
	if err := nvmlctl.NewFake(nvmlctl.H100s(8)...).PersistTo(n.nvml); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "agent", []string{"CGO_CFLAGS=-Wno-deprecated-declarations"}, "--node-name", node, "--fake-nvml", n.nvml,
		"--state-dir", filepath.Join(dir, "state"), "--pod-resources-socket", n.kubelet.Socket)
	return n
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
