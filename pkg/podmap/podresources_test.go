package podmap_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
	prt "github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func newClient(t *testing.T, socket string, timeout time.Duration) *podmap.PodResourcesClient {
	t.Helper()
	c, err := podmap.NewPodResourcesClient(socket, timeout)
	if err != nil {
		t.Fatalf("NewPodResourcesClient: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close pod resources client: %v", err)
		}
	})
	return c
}

func TestListGPUDevicesPerPod(t *testing.T) {
	t.Parallel()
	srv := prt.Start(t,
		prt.Pod("default", "gpu-workload", prt.Container("cuda", prt.Devices(policy.ResourceGPU, gpuFake))),
		prt.Pod("ml", "shared",
			prt.Container("a", prt.Devices(policy.ResourceGPU, gpuH100+"::0", gpuH100+"::1")),
			prt.Container("b", prt.Devices(policy.ResourceGPU, gpuH100+"::2"), prt.Devices(mig1g, migH100))),
		prt.Pod("ml", "by-index", prt.Container("c", prt.Devices(policy.ResourceGPU, "0", "1"))),
		prt.Pod("net", "fpga", prt.Container("c", prt.Devices("example.com/fpga", "fpga0"))),
		prt.Pod("kube-system", "no-devices", prt.Container("c")),
		prt.Pod("ml", "mixed", prt.Container("c",
			prt.Devices("example.com/fpga", "not-a-gpu"),
			prt.Devices(policy.ResourceGPU, "GPU-bogus", gpuFake))),
		// DRA: kubelet lists every device of a claim for each container
		// that names it, and other drivers' devices beside NVIDIA's.
		prt.Pod("llm", "dra",
			prt.Claims(prt.Container("a"), prt.Claim("llm", "dra-gpus-x1", policy.DriverGPU, "node-a", "gpu-0", "gpu-1"),
				prt.Claim("llm", "dra-nic", "nic.example.com", "node-a", "eth0")),
			prt.Claims(prt.Container("b"), prt.Claim("llm", "dra-gpus-x1", policy.DriverGPU, "node-a", "gpu-0", "gpu-1"))),
		prt.Pod("llm", "dra-bogus", prt.Claims(prt.Container("a"),
			prt.Claim("llm", "c", policy.DriverGPU, "node-a", strings.Repeat("x", 64)))),
	)
	c := newClient(t, srv.Socket, 0)

	pods, err := c.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	gpu := func(uuid string) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: uuid} }
	index := func(i int) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindIndex, Index: i} }
	want := []struct {
		pod     string
		devices []podmap.DeviceRef
		invalid []string
	}{
		{"default/gpu-workload", []podmap.DeviceRef{gpu(gpuFake)}, nil},
		{"ml/shared", []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}, {Kind: podmap.KindMIG, UUID: migH100, Part: true}}, nil},
		{"ml/by-index", []podmap.DeviceRef{index(0), index(1)}, nil},
		{"ml/mixed", []podmap.DeviceRef{gpu(gpuFake)}, []string{`pod ml/mixed container c: device "GPU-bogus" of nvidia.com/gpu`}},
		{"llm/dra", []podmap.DeviceRef{{Kind: podmap.KindDRA, Pool: "node-a", Device: "gpu-0", Part: true}, {Kind: podmap.KindDRA, Pool: "node-a", Device: "gpu-1", Part: true}}, nil},
		{"llm/dra-bogus", nil, []string{`pod llm/dra-bogus container a claim c: DRA device "xxx`}},
	}
	if len(pods) != len(want) {
		t.Fatalf("List = %+v; want pods %+v", pods, want)
	}
	for i, w := range want {
		p := pods[i]
		if got := p.Namespace + "/" + p.Name; got != w.pod {
			t.Errorf("pod %d = %s; want %s", i, got, w.pod)
		}
		if !reflect.DeepEqual(p.Devices, w.devices) {
			t.Errorf("%s devices = %+v; want %+v", w.pod, p.Devices, w.devices)
		}
		if len(p.Invalid) != len(w.invalid) {
			t.Errorf("%s invalid = %v; want %q", w.pod, p.Invalid, w.invalid)
			continue
		}
		for j, e := range p.Invalid {
			if !strings.Contains(e.Error(), w.invalid[j]) {
				t.Errorf("%s invalid[%d] = %v; want one containing %q", w.pod, j, e, w.invalid[j])
			}
		}
	}

	srv.SetPods()
	if pods, err := c.List(t.Context()); err != nil || len(pods) != 0 {
		t.Errorf("List after the pods left = %+v, %v; want none", pods, err)
	}
}

// TestListBadSocket: whatever sits at the socket's path, List ends with an
// error that says what it found, and tells a kubelet without PodResources
// (ErrPodResourcesUnavailable) from one that does not answer now.
func TestListBadSocket(t *testing.T) {
	t.Parallel()
	live := prt.Start(t).Socket
	tests := []struct {
		name        string
		make        func(t *testing.T, path string)
		unavailable bool
		code        codes.Code // of the gRPC call, when it was made
		wantErr     string
	}{
		{"no socket: a kubelet without PodResources", func(*testing.T, string) {}, true, codes.OK, "no socket at"},
		{"stale socket nobody listens on: kubelet down", func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			l.(*net.UnixListener).SetUnlinkOnClose(false)
			_ = l.Close()
		}, false, codes.Unavailable, "list pod resources from"},
		{"kubelet that does not serve List", func(t *testing.T, path string) {
			l, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			srv := grpc.NewServer()
			go func() { _ = srv.Serve(l) }()
			t.Cleanup(srv.Stop)
		}, true, codes.Unimplemented, "list pod resources from"},
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, codes.OK, "is a regular file, not a unix socket"},
		{"named pipe", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}, false, codes.OK, "is a named pipe, not a unix socket"},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, false, codes.OK, "is a directory, not a unix socket"},
		{"symlink to a live socket", func(t *testing.T, path string) {
			if err := os.Symlink(live, path); err != nil {
				t.Fatal(err)
			}
		}, false, codes.OK, "is a symlink, not a unix socket"},
		{"symlink to /dev/zero", func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}, false, codes.OK, "is a symlink, not a unix socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, err := os.MkdirTemp("", "podres") // a short path: unix socket addresses hold 108 bytes
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			socket := filepath.Join(dir, "kubelet.sock")
			tt.make(t, socket)
			_, err = newClient(t, socket, 5*time.Second).List(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), socket) {
				t.Fatalf("List error = %v; want one with %q naming %s", err, tt.wantErr, socket)
			}
			if got := errors.Is(err, podmap.ErrPodResourcesUnavailable); got != tt.unavailable {
				t.Errorf("List error %v: unavailable = %v, want %v", err, got, tt.unavailable)
			}
			if tt.code != codes.OK && status.Code(err) != tt.code {
				t.Errorf("List error %v: code %s, want %s", err, status.Code(err), tt.code)
			}
		})
	}
}

func TestListGivesUpOnAHungKubelet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		timeout time.Duration
		ctx     func(context.Context) (context.Context, context.CancelFunc)
	}{
		{"client timeout", 100 * time.Millisecond, func(ctx context.Context) (context.Context, context.CancelFunc) {
			return ctx, func() {}
		}},
		{"caller's earlier deadline", time.Hour, func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 100*time.Millisecond)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := prt.Start(t, prt.Pod("default", "gpu-workload", prt.Container("cuda", prt.Devices(policy.ResourceGPU, gpuFake))))
			srv.Stall()
			c := newClient(t, srv.Socket, tt.timeout)
			ctx, cancel := tt.ctx(t.Context())
			defer cancel()
			// The server never answers: only the deadline under test ends
			// the call (a missing one hangs until the test binary's timeout).
			_, err := c.List(ctx)
			if status.Code(err) != codes.DeadlineExceeded {
				t.Errorf("List error = %v; want DeadlineExceeded", err)
			}
		})
	}
}
