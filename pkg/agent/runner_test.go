package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

type failingKubelet struct{}

func (failingKubelet) List(context.Context) ([]podmap.PodDevices, error) {
	return nil, errors.New("connection refused")
}

// TestFreeze checks that a cycle changes nothing when the agent cannot see
// the whole picture: a GPU the agent capped keeps its cap, even though its pod
// seems gone.
func TestFreeze(t *testing.T) {
	for name, breakIt := range map[string]func(r *Runner){
		"pod cache not synced": func(r *Runner) { r.PodsSynced = func() bool { return false } },
		"API server unreachable": func(r *Runner) {
			r.APIReachable = func(context.Context) error { return errors.New("dial tcp: i/o timeout") }
		},
		"kubelet does not answer": func(r *Runner) { r.PodResources = failingKubelet{} },
	} {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			p := n.run("decode-0", "250", gpu[0])
			alloc := allocations{{Namespace: "llm", Name: p.Name, Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpu[0]}}}}
			r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: alloc, Interval: time.Minute, Log: testr.New(t)}
			if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 250 {
				t.Fatalf("setup: %v, limit %d W", err, n.limitW(gpu[0]))
			}
			// The pod is gone from what the agent can read, and the view breaks.
			r.Pods, r.PodResources = podList{}, allocations{}
			breakIt(r)
			writes := n.writes(gpu[0])
			if err := r.Cycle(t.Context()); err == nil {
				t.Error("a cycle with a broken view reported success")
			}
			if n.writes(gpu[0]) != writes || n.limitW(gpu[0]) != 250 {
				t.Errorf("the agent acted on a broken view: limit %d W", n.limitW(gpu[0]))
			}
			if err := r.Ready(nil); err != nil {
				t.Errorf("readiness right after a good cycle: %v", err)
			}
		})
	}
}

// A cycle's GPUs are listed once: a GPU that does not answer is left out with
// the listing's error kept for the cycle, and a listing with no GPU fails it.
func TestListGPUs(t *testing.T) {
	nv := nvmlfake.New(nvmlfake.H100s(2)...)
	nv.FailAlways(nvmlfake.OpDevices, nvmlfake.UUID(1), &nvmlctl.Error{Op: "DeviceGetHandleByIndex", Code: nvmlctl.CodeGPUIsLost})
	gpus, err := ListGPUs(nv)
	if err != nil || len(gpus.Devices) != 1 || gpus.Devices[0].UUID != nvmlfake.UUID(0) || !errors.Is(gpus.Err, nvmlctl.ErrGPULost) {
		t.Fatalf("one GPU lost: %+v, %v; want the other listed and the loss kept", gpus, err)
	}
	nv.FailAlways(nvmlfake.OpDevices, "", &nvmlctl.Error{Op: "DeviceGetCount", Code: nvmlctl.CodeUninitialized})
	if gpus, err := ListGPUs(nv); err == nil || len(gpus.Devices) != 0 {
		t.Fatalf("no GPU listed: %+v, %v; want the cycle failed", gpus, err)
	}
}
