package podmap_test

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

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
		{"ml/shared", []podmap.DeviceRef{gpu(gpuH100), {Kind: podmap.KindMIG, UUID: migH100}}, nil},
		{"ml/by-index", []podmap.DeviceRef{index(0), index(1)}, nil},
		{"ml/mixed", []podmap.DeviceRef{gpu(gpuFake)}, []string{`pod ml/mixed container c: device "GPU-bogus" of nvidia.com/gpu`}},
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

func TestListKubeletDown(t *testing.T) {
	t.Parallel()
	socket := filepath.Join(t.TempDir(), "kubelet.sock")
	c := newClient(t, socket, 0)
	_, err := c.List(t.Context())
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "list pod resources from "+socket) {
		t.Errorf("List error = %v; want Unavailable naming %s", err, socket)
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
