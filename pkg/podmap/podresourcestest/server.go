// Package podresourcestest serves kubelet's PodResources API on a unix
// socket, with the pods a test sets, so that code reading PodResources is
// tested through real gRPC. It serves List only.
package podresourcestest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// Server is a fake kubelet PodResources endpoint.
type Server struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	// Socket is the path of the unix socket it listens on.
	Socket string

	mu    sync.Mutex
	pods  []*podresourcesv1.PodResources
	stall bool
}

// Start serves pods until the test ends.
func Start(tb testing.TB, pods ...*podresourcesv1.PodResources) *Server {
	tb.Helper()
	s, stop, err := Serve(pods...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := stop(); err != nil {
			tb.Errorf("fake kubelet: %v", err)
		}
	})
	return s
}

// Serve serves pods on a socket in a new temporary folder until stop is
// called; stop removes the folder and reports a failure to serve. Start is
// the form for tests; demos and sandboxes call Serve.
func Serve(pods ...*podresourcesv1.PodResources) (s *Server, stop func() error, err error) {
	// Not t.TempDir(): a long test name would push the path past the 108
	// bytes a unix socket address holds.
	dir, err := os.MkdirTemp("", "podres")
	if err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	s = &Server{Socket: filepath.Join(dir, "kubelet.sock"), pods: pods}
	lis, err := net.Listen("unix", s.Socket)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("listen on %s: %w", s.Socket, err)
	}
	srv := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(srv, s)
	served := make(chan error, 1)
	// Serve returns nil after Stop; anything else is the fake failing.
	go func() { served <- srv.Serve(lis) }()
	stop = func() error {
		srv.Stop()
		err := <-served
		if err != nil {
			err = fmt.Errorf("serve pod resources on %s: %w", s.Socket, err)
		}
		return errors.Join(err, os.RemoveAll(dir))
	}
	return s, stop, nil
}

// SetPods replaces what List answers from now on.
func (s *Server) SetPods(pods ...*podresourcesv1.PodResources) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods = pods
}

// Stall makes List answer nothing until the caller gives up, like a kubelet
// that hangs.
func (s *Server) Stall() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stall = true
}

// List answers with the pods last set.
func (s *Server) List(ctx context.Context, _ *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	s.mu.Lock()
	pods, stall := s.pods, s.stall
	s.mu.Unlock()
	if stall {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &podresourcesv1.ListPodResourcesResponse{PodResources: pods}, nil
}

// Pod builds a pod's entry: Pod("default", "train", Container("cuda",
// Devices("nvidia.com/gpu", "GPU-…"))).
func Pod(namespace, name string, containers ...*podresourcesv1.ContainerResources) *podresourcesv1.PodResources {
	return &podresourcesv1.PodResources{Namespace: namespace, Name: name, Containers: containers}
}

// Container builds a container's entry.
func Container(name string, devices ...*podresourcesv1.ContainerDevices) *podresourcesv1.ContainerResources {
	return &podresourcesv1.ContainerResources{Name: name, Devices: devices}
}

// Devices builds the devices of one resource allocated to a container.
func Devices(resource string, ids ...string) *podresourcesv1.ContainerDevices {
	return &podresourcesv1.ContainerDevices{ResourceName: resource, DeviceIds: ids}
}

// Claims adds to a container's entry the devices DRA drivers prepared for
// its ResourceClaims, as kubelet lists them under dynamic_resources.
func Claims(c *podresourcesv1.ContainerResources, claims ...*podresourcesv1.DynamicResource) *podresourcesv1.ContainerResources {
	c.DynamicResources = append(c.DynamicResources, claims...)
	return c
}

// Claim builds one ResourceClaim's entry: the devices of driver in pool.
func Claim(namespace, name, driver, pool string, devices ...string) *podresourcesv1.DynamicResource {
	claim := &podresourcesv1.DynamicResource{ClaimNamespace: namespace, ClaimName: name}
	for _, d := range devices {
		claim.ClaimResources = append(claim.ClaimResources, &podresourcesv1.ClaimResource{DriverName: driver, PoolName: pool, DeviceName: d})
	}
	return claim
}
