package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// expect compares the registry's series of one metric with want, in the
// text exposition format without HELP and TYPE lines ("" for no series).
func (n *node) expect(name, typ, want string) {
	n.t.Helper()
	text := ""
	if want != "" {
		help := map[string]string{}
		mfs, err := n.registry.Gather()
		if err != nil {
			n.t.Fatal(err)
		}
		for _, mf := range mfs {
			help[mf.GetName()] = mf.GetHelp()
		}
		text = "# HELP " + name + " " + help[name] + "\n# TYPE " + name + " " + typ + "\n" + want
	}
	if err := testutil.GatherAndCompare(n.registry, strings.NewReader(text), name); err != nil {
		n.t.Error(err)
	}
}

func TestPodInfoFollowsTheHolders(t *testing.T) {
	n := newNode(t)
	a := n.run("decode-0", "250", gpu[0])
	b := n.runIn("batch", "train-0", "", gpu[0], gpu[1]) // shares GPU 0, holds GPU 1 alone
	n.reconcile()
	const info = "dynamo_power_agent_gpu_pod_info"
	n.expect(info, "gauge", `
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[0]+`",namespace="batch",pod="train-0"} 1
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[0]+`",namespace="llm",pod="decode-0"} 1
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[1]+`",namespace="batch",pod="train-0"} 1
`)
	// decode-0 goes: its series goes with it, the other pod's stay.
	n.remove(a)
	n.reconcile()
	n.expect(info, "gauge", `
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[0]+`",namespace="batch",pod="train-0"} 1
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[1]+`",namespace="batch",pod="train-0"} 1
`)
	// train-0 no longer holds GPU 1 (kubelet's allocation says GPU 0 alone).
	n.holders[gpu[1]].Delete(b.UID)
	n.reconcile()
	n.expect(info, "gauge", `
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[0]+`",namespace="batch",pod="train-0"} 1
`)
	// A pod the cache no longer has (gone, or finished) holds nothing.
	delete(n.pods, b.UID)
	n.reconcile()
	n.expect(info, "gauge", "")
	// inspect (a dry run) changes no series.
	n.run("decode-1", "300", gpu[2])
	if _, err := n.enforcer.Reconcile(t.Context(), Inputs{GPUs: n.gpus(), Holders: n.holders, Pods: n.pods}, true); err != nil {
		t.Fatal(err)
	}
	n.expect(info, "gauge", "")
	n.reconcile()
	n.expect(info, "gauge", `
dynamo_power_agent_gpu_pod_info{gpu="`+gpu[2]+`",namespace="llm",pod="decode-1"} 1
`)
}

func TestPowerCappedSecondsFollowNVML(t *testing.T) {
	n := newNode(t)
	n.run("decode-0", "250", gpu[0])
	const capped = "dynamo_power_agent_gpu_power_capped_seconds_total"
	series := func(secs ...string) string {
		var b strings.Builder
		for i, s := range secs {
			if s != "" {
				b.WriteString(capped + `{gpu="` + gpu[i] + `"} ` + s + "\n")
			}
		}
		return b.String()
	}
	n.reconcile()
	n.expect(capped, "counter", series("0", "0", "0", "0"))

	// The cap binds: the driver's counter grows, and the series with it.
	must(t, n.nvml.AddPowerCapped(gpu[0], 1500*time.Millisecond))
	n.reconcile()
	n.expect(capped, "counter", series("1.5", "0", "0", "0"))
	must(t, n.nvml.AddPowerCapped(gpu[0], 2*time.Second))
	n.reconcile()
	n.expect(capped, "counter", series("3.5", "0", "0", "0"))

	// A read that fails keeps the last value; NOT_SUPPORTED has no series,
	// whether NVML says so for a call or for the GPU.
	n.nvml.FailNext(nvmlfake.OpPowerCapped, gpu[0], nvmlctl.ErrGPULost)
	n.nvml.FailAlways(nvmlfake.OpPowerCapped, gpu[1], nvmlctl.ErrNotSupported)
	must(t, n.nvml.Update(gpu[2], func(g *nvmlfake.GPU) { g.PowerCappedUnsupported = true }))
	n.reconcile()
	n.expect(capped, "counter", series("3.5", "", "", "0"))

	// The driver's count starts again (driver reload, GPU reset): the
	// series follows it down, which Prometheus takes for a counter reset.
	must(t, n.nvml.Update(gpu[0], func(g *nvmlfake.GPU) { g.PowerCapped = 250 * time.Millisecond }))
	n.reconcile()
	n.expect(capped, "counter", series("0.25", "", "", "0"))

	// Reading it never writes a GPU setting.
	for _, c := range n.nvml.Calls() {
		if c.Op == nvmlfake.OpSetPowerLimit && c.UUID != gpu[0] {
			t.Errorf("a GPU no pod caps was written: %+v", c)
		}
	}
}

func TestLastSuccessfulReconcileAdvancesOnlyOnSuccess(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	alloc := allocations{{Namespace: "llm", Name: p.Name, Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpu[0]}}}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: alloc, Interval: 15 * time.Second, Log: testr.New(t)}
	last := func() float64 { return testutil.ToFloat64(n.metrics.lastSuccess) }
	if got := last(); got != 0 {
		t.Fatalf("before any cycle: %v, want 0", got)
	}

	before := float64(time.Now().UnixNano()) / 1e9
	must(t, r.Cycle(t.Context()))
	after := float64(time.Now().UnixNano()) / 1e9
	ok := last()
	if ok < before || ok > after {
		t.Fatalf("after a good cycle: %v, want within [%v, %v]", ok, before, after)
	}
	if got := testutil.ToFloat64(n.metrics.interval); got != 15 {
		t.Errorf("dynamo_power_agent_reconcile_interval_seconds = %v, want 15", got)
	}

	// A cycle that cannot see the node, and one where a GPU's write fails,
	// are not successes.
	r.PodResources = failingKubelet{}
	if err := r.Cycle(t.Context()); err == nil {
		t.Fatal("a cycle without kubelet succeeded")
	}
	r.PodResources = alloc
	p.Annotations[policy.AnnotationPowerLimit], p.Annotations[policy.AnnotationPowerLimitValidated] = "300", "300"
	n.nvml.FailNext(nvmlfake.OpSetPowerLimit, gpu[0], nvmlctl.ErrNotPermitted)
	if err := r.Cycle(t.Context()); err == nil {
		t.Fatal("a cycle whose write failed succeeded")
	}
	if got := last(); got != ok {
		t.Errorf("after failed cycles: %v, want the last success's %v", got, ok)
	}

	before = float64(time.Now().UnixNano()) / 1e9
	must(t, r.Cycle(t.Context()))
	if got := last(); got < before || got <= ok {
		t.Errorf("after the next good cycle: %v, want at least %v", got, before)
	}
}

func TestUnvalidatedLimitPods(t *testing.T) {
	n := newNode(t)
	n.run("validated", "250", gpu[0])
	unstamped := testpod.MakePod("unstamped", "llm").UID("uid-unstamped").GPU(2).Limit("250").Obj()
	n.pods[unstamped.UID] = unstamped
	n.holders[gpu[1]] = sets.New(unstamped.UID)
	n.holders[gpu[2]] = sets.New(unstamped.UID) // on two GPUs: one pod
	notALimit := testpod.MakePod("not-a-limit", "llm").UID("uid-not-a-limit").GPU(1).Limit("lots").Obj()
	n.pods[notALimit.UID] = notALimit
	n.holders[gpu[3]] = sets.New(notALimit.UID)
	n.runIn("kube-system", "skipped", "250", gpu[3]) // stamped where the webhook never looks
	n.run("unlimited", "", gpu[0])
	n.reconcile()
	count := func() float64 { return testutil.ToFloat64(n.metrics.unvalidated) }
	if got := count(); got != 3 {
		t.Errorf("dynamo_power_agent_unvalidated_limit_pods = %v, want 3 (unstamped, not-a-limit, skipped)", got)
	}
	// The webhook's stamp, and a pod that goes, bring it down.
	unstamped.Annotations[policy.AnnotationPowerLimitValidated] = "250"
	n.remove(notALimit)
	n.reconcile()
	if got := count(); got != 1 {
		t.Errorf("after a stamp and a pod gone: %v, want 1 (skipped)", got)
	}
	// Without --require-validation any well-formed limit counts.
	n.enforcer.RequireValidation = false
	n.reconcile()
	if got := count(); got != 0 {
		t.Errorf("without validation: %v, want 0", got)
	}
}

// TestAlertSeriesAreExported checks the series the shipped alerts read exist
// under their documented names once what they count happens.
func TestAlertSeriesAreExported(t *testing.T) {
	n := newNode(t)
	n.run("a", "300", gpu[1])
	n.run("b", "250", gpu[1])
	n.run("c", "250", gpu[0])
	n.nvml.FailNext(nvmlfake.OpSetPowerLimit, gpu[1], nvmlctl.ErrNotPermitted)
	n.reconcile()
	must(t, n.nvml.SetLimitExternally(gpu[0], 500_000))
	n.reconcile()
	// Series, not values: each counter has one per GPU from the GPU's first
	// cycle, at 0 until what it counts happens (GPU 1's failed write and
	// conflict, GPU 0's drift), so rate() and increase() see the first one.
	for name, want := range map[string]int{
		"dynamo_power_agent_power_limit_failures_total":                  4,
		"dynamo_power_agent_power_limit_conflicts_total":                 4,
		"dynamo_power_agent_drift_repairs_total":                         4,
		"dynamo_power_agent_gpu_pod_info":                                3,
		"dynamo_power_agent_gpu_power_capped_seconds_total":              4,
		"dynamo_power_agent_unvalidated_limit_pods":                      1,
		"dynamo_power_agent_last_successful_reconcile_timestamp_seconds": 1,
		"dynamo_power_agent_reconcile_interval_seconds":                  1,
	} {
		if got, err := testutil.GatherAndCount(n.registry, name); err != nil || got != want {
			t.Errorf("%s: %d series (%v), want %d", name, got, err, want)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
