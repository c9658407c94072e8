package podmap

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

const (
	// DefaultListTimeout bounds one List call when the caller sets none: a
	// kubelet that does not answer must not stall the agent's reconcile.
	DefaultListTimeout = 10 * time.Second
	// maxListMessage is what kubelet's own PodResources client accepts: a
	// node's full listing, CPU and memory assignments included, outgrows
	// gRPC's default 4 MiB.
	maxListMessage = 16 << 20
)

// ErrPodResourcesUnavailable is a kubelet without PodResources: no socket at
// the path, or a kubelet that does not serve List. Any other failure is a
// kubelet that does not answer now.
var ErrPodResourcesUnavailable = errors.New("kubelet PodResources not available")

// PodDevices is what PodResources says one pod holds of NVIDIA GPUs.
type PodDevices struct {
	Namespace, Name string
	// Devices are the pod's GPU devices over all its containers, each once.
	Devices []DeviceRef
	// Invalid has an error for each device ID that did not parse; the pod
	// still holds those devices, so the caller should say so.
	Invalid []error
}

// PodResourcesClient reads kubelet's PodResources API on its unix socket.
type PodResourcesClient struct {
	socket  string
	timeout time.Duration
	conn    *grpc.ClientConn
	lister  podresourcesv1.PodResourcesListerClient
}

// NewPodResourcesClient returns a client of the PodResources socket at path
// (<kubelet root-dir>/pod-resources/kubelet.sock). It connects on first use,
// and again whenever kubelet restarts. timeout bounds each call; zero means
// DefaultListTimeout.
func NewPodResourcesClient(path string, timeout time.Duration) (*PodResourcesClient, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("pod resources socket %s: %w", path, err)
	}
	conn, err := grpc.NewClient("unix://"+abs,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxListMessage)),
	)
	if err != nil {
		return nil, fmt.Errorf("pod resources socket %s: %w", abs, err)
	}
	if timeout <= 0 {
		timeout = DefaultListTimeout
	}
	return &PodResourcesClient{
		socket:  abs,
		timeout: timeout,
		conn:    conn,
		lister:  podresourcesv1.NewPodResourcesListerClient(conn),
	}, nil
}

// Close releases the connection.
func (c *PodResourcesClient) Close() error {
	return c.conn.Close()
}

// List returns the pods that hold NVIDIA GPU devices (nvidia.com/gpu,
// nvidia.com/mig-*, and the devices NVIDIA's DRA driver prepared for their
// ResourceClaims), in kubelet's order; other resources are ignored. Kubelet
// may still list pods that have finished, and names them by namespace/name
// only: telling those apart is the caller's, from its pod cache.
//
// The socket must be a unix socket itself, not a symlink to one: what answers
// on it decides which pods' limits cap which GPUs. No socket at the path, or
// a kubelet that does not implement List, is ErrPodResourcesUnavailable. The
// whole call, connecting included, is bounded by the client's timeout.
func (c *PodResourcesClient) List(ctx context.Context) ([]PodDevices, error) {
	fi, err := os.Lstat(c.socket)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: no socket at %s", ErrPodResourcesUnavailable, c.socket)
	case err != nil:
		return nil, fmt.Errorf("pod resources socket %s: %w", c.socket, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("pod resources socket %s: is a %s, not a unix socket; refusing it", c.socket, fileType(fi.Mode()))
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	resp, err := c.lister.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if status.Code(err) == codes.Unimplemented {
		err = fmt.Errorf("%w: %w", ErrPodResourcesUnavailable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("list pod resources from %s: %w", c.socket, err)
	}
	var pods []PodDevices
	for _, pr := range resp.GetPodResources() {
		if p := gpuDevices(pr); len(p.Devices)+len(p.Invalid) > 0 {
			pods = append(pods, p)
		}
	}
	return pods, nil
}

func gpuDevices(pr *podresourcesv1.PodResources) PodDevices {
	p := PodDevices{Namespace: pr.GetNamespace(), Name: pr.GetName()}
	for _, c := range pr.GetContainers() {
		for _, d := range c.GetDevices() {
			if !isGPUResource(d.GetResourceName()) {
				continue
			}
			for _, id := range d.GetDeviceIds() {
				ref, err := ParseDeviceID(d.GetResourceName(), id)
				switch {
				case err != nil:
					p.Invalid = append(p.Invalid, fmt.Errorf("pod %s/%s container %s: %w", p.Namespace, p.Name, c.GetName(), err))
				case !slices.Contains(p.Devices, ref):
					p.Devices = append(p.Devices, ref)
				}
			}
		}
		for _, claim := range c.GetDynamicResources() {
			for _, d := range claim.GetClaimResources() {
				if d.GetDriverName() != policy.DriverGPU {
					continue
				}
				ref, err := draDevice(d.GetPoolName(), d.GetDeviceName())
				switch {
				case err != nil:
					p.Invalid = append(p.Invalid, fmt.Errorf("pod %s/%s container %s claim %s: %w", p.Namespace, p.Name, c.GetName(), claim.GetClaimName(), err))
				case !slices.Contains(p.Devices, ref):
					// Kubelet lists every device of a claim for each container
					// that names the claim: the pod holds it once.
					p.Devices = append(p.Devices, ref)
				}
			}
		}
	}
	return p
}

// maxPoolName and maxDeviceName are the API's bounds on a pool's and a
// device's name (a DNS subdomain, a DNS label).
const (
	maxPoolName   = 253
	maxDeviceName = 63
)

// draDevice is a device of NVIDIA's DRA driver. Several pods may hold one
// device (a shared claim, admin access), so it is a share (Part): the
// lowest limit among its holders caps it.
func draDevice(pool, device string) (DeviceRef, error) {
	if pool == "" || len(pool) > maxPoolName || device == "" || len(device) > maxDeviceName {
		return DeviceRef{}, fmt.Errorf("DRA device %q in pool %q: not a device name the API accepts", truncate(device, maxDeviceName), truncate(pool, maxPoolName))
	}
	return DeviceRef{Kind: KindDRA, Pool: pool, Device: device, Part: true}, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// fileType names a file's type for an error.
func fileType(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symlink"
	case fs.ModeNamedPipe:
		return "named pipe"
	case fs.ModeDevice:
		return "block device"
	case fs.ModeDevice | fs.ModeCharDevice:
		return "character device"
	}
	return m.Type().String()
}
