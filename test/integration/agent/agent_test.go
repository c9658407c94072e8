// Package agent_test runs the power-agent binary against a real
// kube-apiserver, with a simulated NVML (--fake-nvml) and a fake kubelet
// PodResources server on a unix socket.
package agent_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

const nodeName = "gpu-node-0"

var (
	k8s        client.Client
	restClient rest.Interface
	kubeconfig string
	agentBin   string
)

func TestMain(m *testing.M) { envtestenv.Main(m, "agent integration", setup) }

func setup(m *testing.M) (int, error) {
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return 0, err
	}
	tmp, err := os.MkdirTemp("", "power-agent-it-")
	if err != nil {
		return 0, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	agentBin = filepath.Join(tmp, "power-agent")
	build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentBin, "./cmd/agent") // as the image is built
	build.Dir = envtestenv.Root()
	build.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build power-agent: %w: %s", err, out)
	}

	env := &envtest.Environment{BinaryAssetsDirectory: assets}
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
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return 0, err
	}
	restClient = cs.CoreV1().RESTClient()
	if kubeconfig, err = envtestenv.WriteKubeconfig(env, tmp, "power-agent"); err != nil {
		return 0, err
	}
	ctx := context.Background()
	for _, o := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "llm"}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dynamo-system"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{policy.LabelGPUProduct: "NVIDIA-H100-80GB-HBM3"}}},
	} {
		if err := k8s.Create(ctx, o); err != nil {
			return 0, err
		}
	}
	return m.Run(), nil
}

// node is an agent process on simulated GPUs and a fake kubelet; its state
// (the fake GPUs' file and the ledger) outlives the process, as on a host.
type node struct {
	t       *testing.T
	dir     string
	nvml    string // fake NVML state file
	kubelet *podresourcestest.Server
	agent   *exec.Cmd
	probe   string
	metrics string
	exited  chan error
}

func newNode(t *testing.T) *node {
	t.Helper()
	dir := t.TempDir()
	n := &node{t: t, dir: dir, nvml: filepath.Join(dir, "nvml.json"), kubelet: podresourcestest.Start(t)}
	if err := nvmlfake.New(nvmlfake.H100s(8)...).PersistTo(n.nvml); err != nil {
		t.Fatal(err)
	}
	return n
}

// start runs the agent and waits until it is ready. extra flags come last,
// so they override the harness's (--pod-resources-socket, --proc).
func (n *node) start(interval string, extra ...string) {
	n.t.Helper()
	n.launch(interval, extra...)
	n.eventually("the agent is ready", func() (bool, string) { return envtestenv.Ready(n.probe) })
}

// launch runs the agent without waiting for it to be ready.
func (n *node) launch(interval string, extra ...string) {
	n.t.Helper()
	n.probe, n.metrics = freeAddr(n.t), freeAddr(n.t)
	cmd := exec.Command(agentBin, append([]string{
		"--node-name", nodeName, "--fake-nvml", n.nvml, "--state-dir", filepath.Join(n.dir, "state"),
		"--pod-resources-socket", n.kubelet.Socket, "--interval", interval,
		"--metrics-bind-address", n.metrics, "--health-probe-bind-address", n.probe}, extra...)...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "POD_NAMESPACE=dynamo-system")
	logFile, err := os.OpenFile(filepath.Join(n.dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.agent, n.exited = cmd, make(chan error, 1)
	go func() { n.exited <- cmd.Wait(); _ = logFile.Close() }()
	n.t.Cleanup(func() {
		n.stop()
		if n.t.Failed() {
			log, _ := os.ReadFile(logFile.Name())
			n.t.Logf("agent log:\n%s", log)
		}
	})
}

// stop sends SIGTERM, as the kubelet does, and waits for the exit.
func (n *node) stop() {
	if n.agent == nil {
		return
	}
	_ = n.agent.Process.Signal(syscall.SIGTERM)
	if err := <-n.exited; err != nil {
		n.t.Errorf("the agent did not exit cleanly on SIGTERM: %v", err)
	}
	n.agent = nil
}

func (n *node) limitW(i int) int64 {
	n.t.Helper()
	f, err := nvmlfake.NewFromFile(n.nvml)
	if err != nil {
		n.t.Fatal(err)
	}
	g, err := f.GPU(nvmlfake.UUID(i))
	if err != nil {
		n.t.Fatal(err)
	}
	return int64(g.Limit.WattsDown())
}

func (n *node) eventually(what string, cond func() (bool, string)) {
	n.t.Helper()
	poll.Eventually(n.t, time.Minute, what, cond)
}

func (n *node) limitBecomes(i int, watts int64) {
	n.t.Helper()
	n.eventually(fmt.Sprintf("GPU %d at %d W", i, watts), func() (bool, string) {
		got := n.limitW(i)
		return got == watts, fmt.Sprintf("%d W", got)
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := envtestenv.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func TestAgentEnforcesAdmittedLimits(t *testing.T) {
	n := newNode(t)
	n.start("2s")
	pod := testpod.MakePod("decode-0", "llm").GPU(2).NodeName(nodeName).Limit("250").Stamp("250").Obj()
	if err := k8s.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	// kubelet allocates GPUs 0 and 1 to the pod (before any CUDA process runs).
	n.kubelet.SetPods(podresourcestest.Pod("llm", "decode-0", podresourcestest.Container("worker",
		podresourcestest.Devices(policy.ResourceGPU, nvmlfake.UUID(0), nvmlfake.UUID(1)))))
	n.limitBecomes(0, 250)
	n.limitBecomes(1, 250)
	if got := n.limitW(2); got != 700 {
		t.Errorf("GPU 2, which the pod does not hold, is at %d W", got)
	}

	n.eventually("a PowerLimitApplied event on the pod", func() (bool, string) {
		var list eventsv1.EventList
		if err := k8s.List(t.Context(), &list, client.InNamespace("llm")); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "decode-0" && e.Reason == "PowerLimitApplied" && strings.Contains(e.Note, "to 250 W (was 700 W)") &&
				e.ReportingController == "power-agent" && e.Action == "SetPowerLimit" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(list.Items))
	})

	// The planner patches the limit (the webhook would restamp; here we do).
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:"300",%q:"300"}}}`, policy.AnnotationPowerLimit, policy.AnnotationPowerLimitValidated)
	if err := k8s.Patch(t.Context(), pod, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		t.Fatal(err)
	}
	n.limitBecomes(0, 300)
	n.limitBecomes(1, 300)

	// The pod goes: both GPUs get their original limit back.
	if err := k8s.Delete(t.Context(), pod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	n.kubelet.SetPods()
	n.limitBecomes(0, 700)
	n.limitBecomes(1, 700)
}
