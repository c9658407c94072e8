package agent

import (
	"context"
	"fmt"
	"testing"
	"testing/fstest"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

// podList serves a fixed list of pods, as the node's informer does.
type podList []*corev1.Pod

func (p podList) List(labels.Selector) ([]*corev1.Pod, error) { return p, nil }

type allocations []podmap.PodDevices

func (a allocations) List(context.Context) ([]podmap.PodDevices, error) { return a, nil }

// BenchmarkReconcileSteadyState is one full cycle (gather + reconcile) of a
// node with 8 GPUs, 110 pods and 64 GPU processes on the fake NVML, when
// nothing needs to change: the cost the agent pays every 15 s.
func BenchmarkReconcileSteadyState(b *testing.B) {
	gpus := nvmlfake.H100s(8)
	proc := fstest.MapFS{}
	var pods podList
	var alloc allocations
	for i := range 110 {
		uid := fmt.Sprintf("0b6a4e2c-1111-4c8e-9a57-%012d", i)
		w := testpod.MakePod(fmt.Sprintf("pod-%03d", i), "llm").UID(uid).NodeName("n")
		if i < 8 { // one GPU pod per GPU, 8 processes each
			w.GPU(1).Limit("250").Stamp("250")
			alloc = append(alloc, podmap.PodDevices{Namespace: "llm", Name: w.Name,
				Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpus[i].UUID}}})
			for j := range 8 {
				pid := 1000 + i*8 + j
				gpus[i].Processes = append(gpus[i].Processes, nvmlctl.Process{Kind: nvmlctl.Compute, PID: pid})
				proc[fmt.Sprintf("%d/cgroup", pid)] = &fstest.MapFile{Data: []byte(
					"0::/kubepods/burstable/pod" + uid + "/0d59b6ed52311ae2491e8a63eb1cbbd693121198727f0952849828e63b2b586f\n")}
			}
		}
		pods = append(pods, w.Obj())
	}
	ledger, err := OpenLedger(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	e := &Enforcer{NVML: nvmlfake.New(gpus...), Ledger: ledger, RequireValidation: true, Log: logr.Discard()}
	r := &Runner{Enforcer: e, Pods: pods, PodResources: alloc, Proc: proc, Log: logr.Discard()}
	if err := r.Cycle(b.Context()); err != nil {
		b.Fatal(err)
	}
	in, _ := r.Gather(b.Context())
	if len(in.Holders) != 8 || in.Holders[gpus[0].UUID].Len() != 1 {
		b.Fatalf("holders %v; want each GPU held by its pod", in.Holders)
	}
	if g, _ := e.NVML.(*nvmlfake.Fake).GPU(gpus[7].UUID); g.Limit != 250_000 {
		b.Fatalf("setup: GPU 7 at %d mW", g.Limit)
	}
	writes := len(e.NVML.(*nvmlfake.Fake).Calls())
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Cycle(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for _, c := range e.NVML.(*nvmlfake.Fake).Calls()[writes:] {
		if c.Op == nvmlfake.OpSetPowerLimit {
			b.Fatal("a steady-state cycle wrote a limit")
		}
	}
}
