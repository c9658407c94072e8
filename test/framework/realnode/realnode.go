// Package realnode starts and tears down a real one-node Kubernetes cluster
// on this machine: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, a private containerd and a real kubelet, with images built
// here (no registry, no Docker) and simulated GPUs only (a fake NVIDIA device
// plugin and the fake NVML's state file). It changes the host only in ways
// it records first and puts back at teardown; one such cluster runs per
// machine. It never runs in a shipped binary.
//
// It holds Up (Options, the named steps of bring-up), Attach, Down,
// RestartKubelet and WithdrawDevicePluginGPUs on a Cluster (State, Proc;
// Kubectl, Helm, Install, InstallAgent); the host record that teardown
// restores and tests compare (HostState, SnapshotHost, Before,
// ForgetFirstUse); the images built here
// (ShippedImage, ImageFiles); and the overlays on the shipped manifests and
// chart for this node (WebhookManifests and APIServerAuth, AgentManifest,
// HelmValues, HelmBinary).
package realnode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
	"github.com/dynamo-power/gpu-power/test/framework/apt"
	"github.com/dynamo-power/gpu-power/test/framework/certmanager"
	"github.com/dynamo-power/gpu-power/test/framework/kubectl"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// The cluster's fixed places and addresses. Pods live on a bridge of their
// own; the API server listens on the first address of the service range, so
// pods reach it through the in-cluster address the kubelet gives them, with
// no kube-proxy. No address here is routed off this machine.
const (
	Dir           = "/var/lib/gpu-power-realnode"
	Bridge        = "gpupower0"
	NodeIP        = "10.225.0.1"
	PodSubnet     = "10.225.0.0/24"
	ServiceSubnet = "10.225.1.0/24"
	APIServerIP   = "10.225.1.1"
	APIServerURL  = "https://" + APIServerIP + ":443"
	bridgeMAC     = "02:25:00:00:00:01" // locally administered
	NodeName      = "gpu-node-0"
	// PauseImage is the sandbox image, and the workload image of test pods.
	PauseImage       = "gpu-power.local/pause:dev"
	ContainerdSocket = Dir + "/containerd/containerd.sock"
	// KubeletDir is the kubelet's --root-dir (its default): plugins
	// register under it.
	KubeletDir = "/var/lib/kubelet"
	// FakeNVMLFile is the simulated GPUs' state, in the agent's state
	// folder (a hostPath the DaemonSet already mounts).
	FakeNVMLFile = "/var/lib/power-agent/fake-nvml.json"
	// Kubeconfig is the admin kubeconfig of a running cluster.
	Kubeconfig = Dir + "/pki/admin.kubeconfig"
	lockFile   = "/run/gpu-power-realnode.lock"
	stateFile  = Dir + "/state.json"
)

// GPUProduct is the product label of the simulated GPUs (the fake NVML's H100).
const GPUProduct = "NVIDIA-H100-80GB-HBM3"

// Options of Up.
type Options struct {
	// Root is the repository root (binaries are built from it).
	Root string
	// K8sBin holds etcd, kube-apiserver, kubectl, kubelet,
	// kube-controller-manager and kube-scheduler.
	K8sBin string
	// GPUs is the number of simulated H100s the device plugin serves
	// (default 2).
	GPUs int
	// DRAGPUs is the number of simulated H100s after those that a fake of
	// NVIDIA's DRA driver publishes (gpusim.DRADriver); none by default.
	DRAGPUs int
	// Owner names who started the cluster ("make cluster-up", "test").
	Owner string
	// Logf prints progress.
	Logf func(format string, args ...any)
	// ForgetFirstUse removes the first-use artefacts (firstuse.go) before
	// the host is recorded, as on a machine the node's tools never ran on.
	ForgetFirstUse bool
}

// State is what a running cluster records in Dir, so that teardown (maybe
// by another process, maybe after a crash) finds everything.
type State struct {
	Owner      string    `json:"owner"`
	OwnerPID   int       `json:"ownerPID"`
	OwnerStart uint64    `json:"ownerStart"`
	Before     HostState `json:"before"`
	Procs      []Proc    `json:"procs"`
	GPUs       int       `json:"gpus"`
	DRAGPUs    int       `json:"draGPUs,omitempty"`
}

// Cluster is a running cluster.
type Cluster struct {
	State  State
	Config *rest.Config
	Client kubernetes.Interface
	K8sBin string
}

// Kubectl runs kubectl against the cluster as its admin.
func (c *Cluster) Kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	return kubectl.Runner{Bin: filepath.Join(c.K8sBin, "kubectl"), Kubeconfig: Kubeconfig}.Run(ctx, stdin, args...)
}

// RequiredBinaries are the Kubernetes binaries a node runs.
var RequiredBinaries = []string{"etcd", "kube-apiserver", "kubectl", "kubelet", "kube-controller-manager", "kube-scheduler"}

// lock serialises Up and Down between processes.
func lock() (func(), error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockFile, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); _ = f.Close() }, nil
}

func readState() (*State, error) {
	data, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", stateFile, err)
	}
	return &s, nil
}

func (s *State) write() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	tmp := stateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, stateFile)
}

// running reports whether the cluster's owner and processes still run.
func (s *State) running() bool {
	owner := Proc{PID: s.OwnerPID, StartTime: s.OwnerStart}
	if s.Owner != "make cluster-up" && !owner.Alive() {
		return false // a test that died leaves a cluster nobody uses
	}
	for _, p := range s.Procs {
		if p.Alive() {
			return true
		}
	}
	return false
}

// Up starts the cluster and returns once the node is Ready and advertises
// its GPUs. A cluster left by a crashed run is torn down first. Its steps
// run in order, each a method of bringUp; once the host is recorded, a
// failing step tears down what the earlier ones started.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.GPUs == 0 {
		o.GPUs = 2
	}
	b := &bringUp{o: o, started: time.Now(), pki: pki{dir: filepath.Join(Dir, "pki")}, binDir: filepath.Join(Dir, "bin")}
	if err := checkBinaries(o.K8sBin); err != nil {
		return nil, err
	}
	if err := ensurePackages(o.Logf); err != nil {
		return nil, err
	}
	unlock, err := lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := b.cleanUpLeftover(); err != nil {
		return nil, err
	}
	if err := b.recordHost(); err != nil {
		return nil, err
	}
	// From here on a failure tears down what started.
	defer func() {
		if err != nil {
			b.tearDownFailed()
		}
	}()
	for _, step := range []func(context.Context) error{
		b.writeCredentials,
		b.createBridge,
		b.startEtcd,
		b.startAPIServer,
		b.installCertManagerCRDs,
		b.startControllers,
		b.buildNodeBinaries,
		b.startContainerd,
		b.importImages,
		b.startKubelet,
		b.startAddons,
		b.createRuntimeClass,
	} {
		if err := step(ctx); err != nil {
			return nil, err
		}
	}
	b.c.State = *b.st
	b.step("cluster up: KUBECONFIG=%s", Kubeconfig)
	return b.c, nil
}

// pollInterval is how often Up looks at a component it started: they come
// up in seconds.
const pollInterval = 200 * time.Millisecond

// bringUp is a cluster being started: what Up's steps hand on to later ones.
type bringUp struct {
	o       Options
	started time.Time
	st      *State // recorded in stateFile, from recordHost on
	pki     pki
	binDir  string // the node's own binaries and images' contents
	// admissionConfig lets the API server authenticate to the webhook
	// (writeCredentials).
	admissionConfig string
	etcdURL         string
	c               *Cluster // from startAPIServer on
}

// step prints progress with the seconds since Up began.
func (b *bringUp) step(format string, args ...any) {
	b.o.Logf("[%5.1fs] %s", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

// launch starts a component, in the control plane's cgroup, and records it
// so that teardown stops it.
func (b *bringUp) launch(name, bin string, args ...string) error {
	p, err := start(filepath.Join(Dir, "logs"), name, bin, args, nil)
	if err != nil {
		return err
	}
	joinControlPlaneCgroup(p.PID)
	b.st.Procs = append(b.st.Procs, p)
	return b.st.write()
}

// checkBinaries fails with the make target to run when a Kubernetes binary
// is missing from k8sBin.
func checkBinaries(k8sBin string) error {
	for _, b := range RequiredBinaries {
		if _, err := os.Stat(filepath.Join(k8sBin, b)); err != nil {
			return fmt.Errorf("%s not found in %s: run `make cluster-binaries` (hack/build-k8s.sh)", b, k8sBin)
		}
	}
	return nil
}

// cleanUpLeftover tears down a cluster a run left behind, and refuses when
// that cluster still runs: one per machine.
func (b *bringUp) cleanUpLeftover() error {
	old, err := readState()
	if err != nil || old == nil {
		return err
	}
	if old.running() {
		return fmt.Errorf("a cluster started by %s (pid %d) is already up: one per machine; `make cluster-down` stops it", old.Owner, old.OwnerPID)
	}
	b.step("cleaning up a cluster left by a run that did not tear it down")
	if err := down(old, b.o.Logf); err != nil {
		return fmt.Errorf("clean up the previous cluster: %w", err)
	}
	return nil
}

// recordHost snapshots the host (after forgetting the first-use artefacts
// when asked), makes the cluster's folders and writes the state file that
// teardown reads.
func (b *bringUp) recordHost() error {
	if b.o.ForgetFirstUse {
		removed, err := ForgetFirstUse()
		if err != nil {
			return fmt.Errorf("meet the host as a fresh machine: %w", err)
		}
		b.step("fresh host: removed the first-use artefacts %v (of %d known)", removed, len(firstUseArtefacts))
	}
	before, err := SnapshotHost()
	if err != nil {
		return err
	}
	ownerStart, _ := startTime(os.Getpid())
	st := &State{Owner: b.o.Owner, OwnerPID: os.Getpid(), OwnerStart: ownerStart, Before: before, GPUs: b.o.GPUs, DRAGPUs: b.o.DRAGPUs}
	for _, d := range []string{"logs", "bin", "images", "etcd", "apiserver", "cni/net.d", "cni/ipam", "containerd"} {
		if err := os.MkdirAll(filepath.Join(Dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := st.write(); err != nil {
		return err
	}
	b.st = st
	return nil
}

// tearDownFailed shows the components' logs and tears down what started.
func (b *bringUp) tearDownFailed() {
	logf := b.o.Logf
	logf("start failed; logs are in %s/logs; tearing down", Dir)
	if dumpErr := dumpLogs(logf); dumpErr != nil {
		logf("%v", dumpErr)
	}
	if derr := down(b.st, logf); derr != nil {
		logf("teardown: %v", derr)
	}
}

// writeCredentials writes the cluster's certificates and kubeconfigs, and
// the client certificate the API server authenticates to the webhook with.
func (b *bringUp) writeCredentials(context.Context) error {
	if err := b.pki.write(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	webhookAuth, err := admissionauth.Write(filepath.Dir(APIServerAuth().CA), admissionauth.ServiceHost)
	if err != nil {
		return fmt.Errorf("webhook client certificate: %w", err)
	}
	b.admissionConfig = webhookAuth.AdmissionConfig
	return nil
}

// createBridge makes the pods' bridge, holding the node's and the API
// server's addresses.
func (b *bringUp) createBridge(context.Context) error {
	for _, args := range [][]string{
		// A bridge without an address of its own takes the lowest MAC of
		// its ports, so adding or removing a pod's veth could change it and
		// leave every pod's ARP entry for the node and the API server
		// stale for tens of seconds: probes time out, endpoints empty.
		{"link", "add", Bridge, "address", bridgeMAC, "type", "bridge"},
		{"addr", "add", NodeIP + "/24", "dev", Bridge},
		{"addr", "add", APIServerIP + "/32", "dev", Bridge},
		{"link", "set", Bridge, "up"},
	} {
		if err := run("ip", args...); err != nil {
			return err
		}
	}
	b.step("bridge %s: node %s, API server %s", Bridge, NodeIP, APIServerIP)
	return nil
}

// startEtcd runs etcd on two free loopback ports and waits until it is
// healthy.
func (b *bringUp) startEtcd(ctx context.Context) error {
	etcdPort, peerPort, err := freePorts()
	if err != nil {
		return err
	}
	b.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	if err := b.launch("etcd", filepath.Join(b.o.K8sBin, "etcd"), "--data-dir", filepath.Join(Dir, "etcd"),
		"--listen-client-urls", b.etcdURL, "--advertise-client-urls", b.etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL, "--initial-cluster", "default="+peerURL,
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: time.Minute}, "etcd healthy", func(context.Context) (bool, string, error) {
		resp, err := http.Get(b.etcdURL + "/health")
		if err != nil {
			return false, err.Error(), nil // not up yet
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	}); err != nil {
		return err
	}
	b.step("etcd healthy")
	return nil
}

// startAPIServer runs kube-apiserver on the service range's first address
// and waits until it is ready; the Cluster exists from here on.
func (b *bringUp) startAPIServer(ctx context.Context) error {
	p := b.pki
	if err := b.launch("kube-apiserver", filepath.Join(b.o.K8sBin, "kube-apiserver"),
		"--etcd-servers", b.etcdURL,
		"--bind-address", APIServerIP, "--secure-port", "443", "--advertise-address", APIServerIP,
		"--service-cluster-ip-range", ServiceSubnet,
		"--cert-dir", filepath.Join(Dir, "apiserver"),
		"--tls-cert-file", p.path("apiserver.crt"), "--tls-private-key-file", p.path("apiserver.key"),
		"--client-ca-file", p.path("ca.crt"),
		"--service-account-key-file", p.path("sa.pub"), "--service-account-signing-key-file", p.path("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
		"--kubelet-client-certificate", p.path("apiserver-kubelet-client.crt"),
		"--kubelet-client-key", p.path("apiserver-kubelet-client.key"),
		// The node's name resolves nowhere: logs and exec go to its address.
		"--kubelet-preferred-address-types", "InternalIP",
		// Webhooks are reached at their Service's endpoints: no kube-proxy.
		"--enable-aggregator-routing=true",
		"--allow-privileged=true",
		"--admission-control-config-file", b.admissionConfig,
	); err != nil {
		return err
	}
	cfg, client, err := adminClient()
	if err != nil {
		return err
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: 2 * time.Minute}, "kube-apiserver ready", func(ctx context.Context) (bool, string, error) {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return false, err.Error(), nil // not up yet
		}
		return string(body) == "ok", string(body), nil
	}); err != nil {
		return err
	}
	b.step("kube-apiserver ready at %s", APIServerURL)
	b.c = &Cluster{Config: cfg, Client: client, K8sBin: b.o.K8sBin}
	return nil
}

// installCertManagerCRDs applies cert-manager's CRDs from the module cache
// and waits until they are established.
func (b *bringUp) installCertManagerCRDs(ctx context.Context) error {
	crds, err := certmanager.CRDDir()
	if err != nil {
		return err
	}
	if _, err := b.c.Kubectl(ctx, "", "apply", "--server-side", "-f", crds); err != nil {
		return err
	}
	if _, err := b.c.Kubectl(ctx, "", "wait", "--for", "condition=Established", "--timeout", "2m", "crd", "--all"); err != nil {
		return err
	}
	b.step("cert-manager CRDs established")
	return nil
}

// startControllers runs kube-controller-manager and kube-scheduler.
func (b *bringUp) startControllers(context.Context) error {
	p := b.pki
	if err := b.launch("kube-controller-manager", filepath.Join(b.o.K8sBin, "kube-controller-manager"),
		"--kubeconfig", p.kubeconfig("controller-manager"),
		"--service-account-private-key-file", p.path("sa.key"), "--root-ca-file", p.path("ca.crt"),
		"--use-service-account-credentials=true", "--leader-elect=false", "--secure-port=0",
	); err != nil {
		return err
	}
	if err := b.launch("kube-scheduler", filepath.Join(b.o.K8sBin, "kube-scheduler"),
		"--kubeconfig", p.kubeconfig("scheduler"), "--leader-elect=false", "--secure-port=0",
	); err != nil {
		return err
	}
	b.step("kube-controller-manager and kube-scheduler started")
	return nil
}

// buildNodeBinaries builds this module's binaries for the node's images
// and its addons.
func (b *bringUp) buildNodeBinaries(ctx context.Context) error {
	return buildBinaries(ctx, b.o.Root, b.binDir, b.step)
}

// startContainerd writes the private containerd's and the CNI's
// configuration, runs containerd and waits until it serves.
func (b *bringUp) startContainerd(ctx context.Context) error {
	if err := writeFile(filepath.Join(Dir, "containerd", "config.toml"), containerdConfig()); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(Dir, "cni", "net.d", "10-gpu-power.conflist"), cniConfig()); err != nil {
		return err
	}
	if err := b.launch("containerd", "containerd", "--config", filepath.Join(Dir, "containerd", "config.toml")); err != nil {
		return err
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: time.Minute}, "containerd serving", func(context.Context) (bool, string, error) {
		if err := run("ctr", "--address", ContainerdSocket, "version"); err != nil {
			return false, err.Error(), nil // not up yet
		}
		return true, "", nil
	}); err != nil {
		return err
	}
	b.step("containerd serving on %s", ContainerdSocket)
	return nil
}

// importImages writes the images built here and imports them into
// containerd's k8s.io namespace: no registry.
func (b *bringUp) importImages(context.Context) error {
	imgs, err := writeImages(b.o.Root, b.binDir, b.step)
	if err != nil {
		return err
	}
	for _, path := range imgs {
		if err := run("ctr", "--address", ContainerdSocket, "-n", "k8s.io", "images", "import", path); err != nil {
			return err
		}
	}
	b.step("imported %d images", len(imgs))
	return nil
}

// startKubelet writes the simulated GPUs' state and the kubelet's
// configuration, runs the kubelet and waits until the node is Ready.
func (b *bringUp) startKubelet(ctx context.Context) error {
	fake := nvmlfake.New(nvmlfake.H100s(b.o.GPUs + b.o.DRAGPUs)...)
	if err := os.MkdirAll(filepath.Dir(FakeNVMLFile), 0o755); err != nil {
		return err
	}
	if err := fake.PersistTo(FakeNVMLFile); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(Dir, "kubelet", "config.yaml"), kubeletConfig(b.pki)); err != nil {
		return err
	}
	if err := b.launch("kubelet", filepath.Join(b.o.K8sBin, "kubelet"),
		"--config", filepath.Join(Dir, "kubelet", "config.yaml"),
		"--kubeconfig", b.pki.kubeconfig("kubelet"),
		"--hostname-override", NodeName, "--node-ip", NodeIP,
		"--node-labels", "nvidia.com/gpu.present=true,nvidia.com/gpu.product="+GPUProduct,
		"-v", "2",
	); err != nil {
		return err
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: 3 * time.Minute}, "node "+NodeName+" Ready", func(ctx context.Context) (bool, string, error) {
		n, err := b.c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil // not registered yet
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue, c.Reason, nil
			}
		}
		return false, "no Ready condition", nil
	}); err != nil {
		return err
	}
	b.step("node %s Ready", NodeName)
	return nil
}

// startAddons runs the fake device plugin and cert-manager (realnode
// addons) and waits until the node advertises its GPUs.
func (b *bringUp) startAddons(ctx context.Context) error {
	if err := b.launch("addons", filepath.Join(b.binDir, "realnode"), "addons", "--gpus", fmt.Sprint(b.o.GPUs), "--dra-gpus", fmt.Sprint(b.o.DRAGPUs)); err != nil {
		return err
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: 2 * time.Minute}, "node advertises its GPUs", func(ctx context.Context) (bool, string, error) {
		n, err := b.c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil // retried
		}
		q := n.Status.Allocatable["nvidia.com/gpu"]
		return q.Value() == int64(b.o.GPUs), q.String() + " nvidia.com/gpu", nil
	}); err != nil {
		return err
	}
	b.step("fake device plugin registered: %d nvidia.com/gpu; cert-manager's controllers and cainjector run beside it", b.o.GPUs)
	if b.o.DRAGPUs == 0 {
		return nil
	}
	if err := poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: 2 * time.Minute}, "the DRA driver publishes its GPUs", func(ctx context.Context) (bool, string, error) {
		list, err := b.c.Client.ResourceV1().ResourceSlices().List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + NodeName})
		if err != nil {
			return false, err.Error(), nil // retried
		}
		n := 0
		for _, rs := range list.Items {
			if rs.Spec.Driver == policy.DriverGPU {
				n += len(rs.Spec.Devices)
			}
		}
		return n == b.o.DRAGPUs, fmt.Sprintf("%d devices of %s published", n, policy.DriverGPU), nil
	}); err != nil {
		return err
	}
	b.step("fake DRA driver %s registered: %d GPUs in a ResourceSlice, DeviceClass %s", policy.DriverGPU, b.o.DRAGPUs, policy.DeviceClassGPU)
	return nil
}

// createRuntimeClass creates the nvidia RuntimeClass GPU pods name, run by
// plain runc on this node.
func (b *bringUp) createRuntimeClass(ctx context.Context) error {
	rc := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "nvidia"}, Handler: "runc"}
	if _, err := b.c.Client.NodeV1().RuntimeClasses().Create(ctx, rc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// Attach returns the cluster that is up now (started by `make cluster-up`),
// for running tests against it without starting another.
func Attach(k8sBin string) (*Cluster, error) {
	st, err := readState()
	if err != nil {
		return nil, err
	}
	if st == nil || !st.running() {
		return nil, errors.New("no cluster is up: `make cluster-up` starts one")
	}
	cfg, client, err := adminClient()
	if err != nil {
		return nil, err
	}
	return &Cluster{State: *st, Config: cfg, Client: client, K8sBin: k8sBin}, nil
}

// RestartKubelet stops the kubelet (SIGTERM, as a service manager would)
// and starts it again with the same arguments; pods keep running.
func (c *Cluster) RestartKubelet(logf func(string, ...any)) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState()
	if err != nil || st == nil {
		return fmt.Errorf("no cluster recorded: %w", err)
	}
	for i, p := range st.Procs {
		if p.Name != "kubelet" {
			continue
		}
		if err := p.Stop(30 * time.Second); err != nil {
			return err
		}
		logf("kubelet (pid %d) stopped", p.PID)
		np, err := start(filepath.Join(Dir, "logs"), p.Name, p.Bin, p.Args, nil)
		if err != nil {
			return err
		}
		joinControlPlaneCgroup(np.PID)
		st.Procs[i] = np
		logf("kubelet started again (pid %d)", np.PID)
		return st.write()
	}
	return errors.New("no kubelet recorded")
}

// The signals that have the addons process withdraw the fake device
// plugin's GPUs (gpusim.Plugin.Withdraw) and bring them back.
const (
	WithdrawGPUsSignal = syscall.SIGUSR1
	RestoreGPUsSignal  = syscall.SIGUSR2
)

// WithdrawDevicePluginGPUs has the fake device plugin report its GPUs
// unhealthy and waits until the node's allocatable nvidia.com/gpu is 0 (its
// capacity stays): on such a node the scheduler serves nvidia.com/gpu
// through DRA, if a DeviceClass names it its extendedResourceName.
// RestoreDevicePluginGPUs undoes it.
func (c *Cluster) WithdrawDevicePluginGPUs(ctx context.Context) error {
	return c.signalDevicePlugin(ctx, WithdrawGPUsSignal, 0)
}

// RestoreDevicePluginGPUs reports the fake device plugin's GPUs healthy
// again and waits until the node's allocatable has them all.
func (c *Cluster) RestoreDevicePluginGPUs(ctx context.Context) error {
	return c.signalDevicePlugin(ctx, RestoreGPUsSignal, c.State.GPUs)
}

func (c *Cluster) signalDevicePlugin(ctx context.Context, sig syscall.Signal, allocatable int) error {
	i := slices.IndexFunc(c.State.Procs, func(p Proc) bool { return p.Name == "addons" })
	if i < 0 || !c.State.Procs[i].Alive() {
		return errors.New("the addons process, which runs the fake device plugin, is not running")
	}
	if err := syscall.Kill(c.State.Procs[i].PID, sig); err != nil {
		return fmt.Errorf("signal the addons process: %w", err)
	}
	// The kubelet reports the change with its next node status (10 s).
	what := fmt.Sprintf("node %s allocatable %d %s", NodeName, allocatable, policy.ResourceGPU)
	return poll.Until(ctx, poll.Opts{Interval: pollInterval, Timeout: time.Minute}, what, func(ctx context.Context) (bool, string, error) {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err != nil {
			return false, err.Error(), nil // retried
		}
		q := n.Status.Allocatable[policy.ResourceGPU]
		return q.Value() == int64(allocatable), q.String() + " allocatable", nil
	})
}

// Down tears the cluster down and puts the host back. It does nothing when
// no cluster is recorded.
func Down(logf func(string, ...any)) error {
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState()
	if err != nil || st == nil {
		return err
	}
	return down(st, logf)
}

// Before returns the host state recorded before the running cluster started.
func Before() (*HostState, error) {
	st, err := readState()
	if err != nil || st == nil {
		return nil, err
	}
	return &st.Before, nil
}

func down(st *State, logf func(string, ...any)) error {
	start := time.Now()
	var errs []error
	for i := len(st.Procs) - 1; i >= 0; i-- {
		if err := st.Procs[i].Stop(20 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	killShims()
	if err := restoreHost(st.Before, logf); err != nil {
		errs = append(errs, err)
	}
	logf("cluster down in %.1fs", time.Since(start).Seconds())
	return errors.Join(errs...)
}

// killShims ends containerd's runc shims of this node's containerd: they
// outlive containerd by design.
func killShims() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(data), "containerd-shim") || !strings.Contains(string(data), Dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func dumpLogs(logf func(string, ...any)) error {
	logs, err := filepath.Glob(filepath.Join(Dir, "logs", "*.log"))
	if err != nil {
		return err
	}
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		logf("--- last lines of %s:\n%s", l, strings.Join(lines, "\n"))
	}
	return nil
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ensurePackages installs containerd, runc and the CNI plugins from the
// distribution when they are missing (a fresh machine has none).
func ensurePackages(logf func(string, ...any)) error {
	missing := false
	for _, f := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(f); err != nil {
			missing = true
		}
	}
	if _, err := os.Stat(filepath.Join(cniBinDir, "bridge")); err != nil {
		missing = true
	}
	if !missing {
		return nil
	}
	return apt.Install(logf, "containerd, runc and the CNI plugins", "containerd", "runc", "containernetworking-plugins")
}

func freePorts() (int, int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports[0], ports[1], nil
}

// adminClient connects with the cluster's admin kubeconfig.
func adminClient() (*rest.Config, *kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	return cfg, client, err
}
