// Package gpusim is the only simulated part of the real node: the GPUs. A
// fake NVIDIA device plugin (Plugin) advertises nvidia.com/gpu to the kubelet
// with the UUIDs of the fake NVML's devices, healthy until withdrawn; a fake
// of NVIDIA's DRA kubelet plugin (DRADriver, dra.go) publishes others in a
// ResourceSlice, with the DeviceClass, and prepares the claims the scheduler
// allocates from them;
// and a feeder (Feeder) writes the real host PIDs of the containers the
// kubelet gave each GPU into the fake NVML's process list, as the driver
// would list a CUDA process. It never touches a real GPU.
package gpusim

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

const (
	// ResourceName is what GPU pods request.
	ResourceName = policy.ResourceGPU
	// kubeletSocket is hard-coded in the kubelet (it ignores --root-dir).
	kubeletSocket  = pluginapi.KubeletSocket
	pluginSocket   = "gpu-power-fake.sock"
	podResources   = "/var/lib/kubelet/pod-resources/kubelet.sock"
	cgroupPidsRoot = "/sys/fs/cgroup/pids/kubepods"
)

// Plugin is a device plugin that serves the fake NVML's GPUs.
type Plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	UUIDs []string

	mu        sync.Mutex
	withdrawn bool
	// changed is closed when withdrawn changes: ListAndWatch sends again.
	changed chan struct{}
}

// Withdraw reports the GPUs unhealthy to the kubelet, or healthy again: the
// node's allocatable nvidia.com/gpu drops to 0 and comes back, its capacity
// stays, as when NVIDIA's plugin finds its GPUs failing. The scheduler serves
// nvidia.com/gpu through DRA on a node whose allocatable has none.
func (p *Plugin) Withdraw(withdrawn bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.withdrawn = withdrawn
	if p.changed != nil {
		close(p.changed)
	}
	p.changed = make(chan struct{})
}

// health is what ListAndWatch sends now, and what tells it to send again.
func (p *Plugin) health() (string, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.changed == nil {
		p.changed = make(chan struct{})
	}
	if p.withdrawn {
		return pluginapi.Unhealthy, p.changed
	}
	return pluginapi.Healthy, p.changed
}

// GetDevicePluginOptions implements the device plugin API.
func (p *Plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the GPUs, all healthy unless withdrawn, and again each
// time Withdraw changes that, until the stream ends.
func (p *Plugin) ListAndWatch(_ *pluginapi.Empty, stream pluginapi.DevicePlugin_ListAndWatchServer) error {
	for {
		health, changed := p.health()
		resp := &pluginapi.ListAndWatchResponse{}
		for _, u := range p.UUIDs {
			resp.Devices = append(resp.Devices, &pluginapi.Device{ID: u, Health: health})
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changed:
		}
	}
}

// Allocate answers as NVIDIA's plugin does in its envvar strategy, without
// device nodes: there are none to mount.
func (p *Plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	resp := &pluginapi.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Envs: map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

// GetPreferredAllocation implements the device plugin API (no preference).
func (p *Plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

// PreStartContainer implements the device plugin API (nothing to do).
func (p *Plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// Serve serves the plugin and registers it with the kubelet, again each time
// the kubelet restarts (it removes every plugin socket when it starts).
func (p *Plugin) Serve(ctx context.Context, logf func(string, ...any)) error {
	dir := filepath.Dir(kubeletSocket)
	sock := filepath.Join(dir, pluginSocket)
	for ctx.Err() == nil {
		_ = os.Remove(sock)
		l, err := net.Listen("unix", sock)
		if err != nil {
			logf("Listen on %s failed: %v", sock, err)
			sleep(ctx, time.Second)
			continue
		}
		srv := grpc.NewServer()
		pluginapi.RegisterDevicePluginServer(srv, p)
		go func() { _ = srv.Serve(l) }()
		if err := register(ctx); err != nil {
			logf("Registration with the kubelet failed, retrying: %v", err)
			srv.Stop()
			sleep(ctx, time.Second)
			continue
		}
		logf("Registered %s with the kubelet: %d devices", ResourceName, len(p.UUIDs))
		// Our socket gone means the kubelet restarted and cleaned its folder.
		for ctx.Err() == nil {
			if _, err := os.Stat(sock); err != nil {
				logf("Plugin socket removed (kubelet restarted): registering again")
				break
			}
			sleep(ctx, 500*time.Millisecond)
		}
		srv.Stop()
	}
	return nil
}

func register(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version: pluginapi.Version, Endpoint: pluginSocket, ResourceName: ResourceName,
	})
	return err
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// Feeder keeps the fake NVML's process lists equal to the host PIDs of the
// running containers that the kubelet gave each GPU, as the driver lists the
// CUDA processes on a GPU.
type Feeder struct {
	Client   kubernetes.Interface
	NodeName string
	NVMLFile string
	Period   time.Duration
}

// Run feeds until ctx ends.
func (f *Feeder) Run(ctx context.Context, logf func(string, ...any)) error {
	conn, err := grpc.NewClient("unix://"+podResources, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	lister := podresourcesv1.NewPodResourcesListerClient(conn)
	fake, err := nvmlfake.NewFromFile(f.NVMLFile)
	if err != nil {
		return err
	}
	for ctx.Err() == nil {
		if err := f.feed(ctx, lister, fake, logf); err != nil {
			logf("Feeding the fake NVML failed: %v", err)
		}
		sleep(ctx, f.Period)
	}
	return nil
}

func (f *Feeder) feed(ctx context.Context, lister podresourcesv1.PodResourcesListerClient, fake *nvmlfake.Fake, logf func(string, ...any)) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := lister.List(lctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return fmt.Errorf("pod resources: %w", err)
	}
	pods, err := f.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", f.NodeName).String(),
	})
	if err != nil {
		return err
	}
	byName := map[string]*corev1.Pod{}
	for i := range pods.Items {
		byName[pods.Items[i].Namespace+"/"+pods.Items[i].Name] = &pods.Items[i]
	}
	want := map[string][]nvmlctl.Process{}
	for _, pr := range resp.PodResources {
		pod := byName[pr.Namespace+"/"+pr.Name]
		if pod == nil {
			continue
		}
		for _, c := range pr.Containers {
			var gpus []string
			for _, d := range c.Devices {
				if d.ResourceName == ResourceName {
					gpus = append(gpus, d.DeviceIds...)
				}
			}
			if len(gpus) == 0 {
				continue
			}
			for _, pid := range containerPIDs(pod, c.Name) {
				for _, g := range gpus {
					want[g] = append(want[g], nvmlctl.Process{Kind: nvmlctl.Compute, PID: pid, UsedMemory: 1 << 30})
				}
			}
		}
	}
	st, err := fake.State()
	if err != nil {
		return err
	}
	for _, g := range st.Devices {
		procs := want[g.UUID]
		if slices.Equal(procs, g.Processes) || (len(procs) == 0 && len(g.Processes) == 0) {
			continue
		}
		if err := fake.SetProcesses(g.UUID, procs...); err != nil {
			return err
		}
		logf("GPU %s now runs %d processes %v", g.UUID, len(procs), pidsOf(procs))
	}
	return nil
}

func pidsOf(procs []nvmlctl.Process) []int {
	var out []int
	for _, p := range procs {
		out = append(out, p.PID)
	}
	return out
}

// containerPIDs reads the host PIDs of a running container from its real
// cgroup (cgroupfs driver: kubepods[/<qos>]/pod<uid>/<container id>).
func containerPIDs(pod *corev1.Pod, container string) []int {
	var id string
	for _, s := range slices.Concat(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses) {
		if s.Name == container && s.State.Running != nil {
			_, id, _ = strings.Cut(s.ContainerID, "://")
		}
	}
	if id == "" {
		return nil
	}
	for _, qos := range []string{"", "burstable", "besteffort"} {
		data, err := os.ReadFile(filepath.Join(cgroupPidsRoot, qos, "pod"+string(pod.UID), id, "cgroup.procs"))
		if err != nil {
			continue
		}
		var pids []int
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	return nil
}
