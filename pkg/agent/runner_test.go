package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

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
