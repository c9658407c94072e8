package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/events"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

var gpu = []string{nvmlfake.UUID(0), nvmlfake.UUID(1), nvmlfake.UUID(2), nvmlfake.UUID(3)}

// node is a test node: four fake H100s, a ledger, and the pods on it.
type node struct {
	t        *testing.T
	nvml     *nvmlfake.Fake
	dir      string
	enforcer *Enforcer
	events   *events.FakeRecorder
	metrics  *Metrics
	registry *prometheus.Registry
	pods     map[types.UID]*corev1.Pod
	holders  podmap.Holders
}

func newNode(t *testing.T) *node {
	n := &node{t: t, nvml: nvmlfake.New(nvmlfake.H100s(4)...), dir: t.TempDir(),
		pods: map[types.UID]*corev1.Pod{}, holders: podmap.Holders{}}
	n.restartAgent()
	return n
}

// restartAgent starts a new enforcer on the same GPUs and state directory.
func (n *node) restartAgent() {
	ledger, err := OpenLedger(n.dir)
	if err != nil {
		n.t.Fatal(err)
	}
	n.events = events.NewFakeRecorder(100)
	n.registry = prometheus.NewRegistry()
	n.metrics = NewMetrics(n.registry)
	n.enforcer = &Enforcer{NVML: n.nvml, Ledger: ledger, RequireValidation: true, SkippedNamespaces: sets.New(policy.SkippedNamespaces...),
		Recorder: n.events, Log: testr.New(n.t), Metrics: n.metrics}
}

// run places a pod on GPUs with a validated limit ("" for none).
func (n *node) run(name, limit string, gpus ...string) *corev1.Pod {
	return n.runIn("llm", name, limit, gpus...)
}

// runIn is run in another namespace.
func (n *node) runIn(namespace, name, limit string, gpus ...string) *corev1.Pod {
	w := testpod.MakePod(name, namespace).UID("uid-" + name).GPU(int64(len(gpus)))
	if limit != "" {
		w.Limit(limit).Stamp(limit)
	}
	p := w.Obj()
	n.pods[p.UID] = p
	for _, g := range gpus {
		if n.holders[g] == nil {
			n.holders[g] = sets.New[types.UID]()
		}
		n.holders[g].Insert(p.UID)
	}
	return p
}

func (n *node) remove(p *corev1.Pod) {
	delete(n.pods, p.UID)
	for _, s := range n.holders {
		s.Delete(p.UID)
	}
}

// gpus lists the node's GPUs, as a cycle does before it reconciles.
func (n *node) gpus() GPUs {
	n.t.Helper()
	gpus, err := ListGPUs(n.nvml)
	if err != nil {
		n.t.Logf("list GPUs: %v", err)
	}
	return gpus
}

func (n *node) reconcile() map[string]GPUReport {
	n.t.Helper()
	reports, err := n.enforcer.Reconcile(n.t.Context(), Inputs{GPUs: n.gpus(), Holders: n.holders, Pods: n.pods}, false)
	out := map[string]GPUReport{}
	for _, r := range reports {
		out[r.UUID] = r
	}
	if err != nil {
		n.t.Logf("reconcile: %v", err)
	}
	return out
}

func (n *node) limitW(uuid string) int64 {
	n.t.Helper()
	g, err := n.nvml.GPU(uuid)
	if err != nil {
		n.t.Fatal(err)
	}
	return int64(g.Limit.WattsDown())
}

func (n *node) writes(uuid string) int {
	count := 0
	for _, c := range n.nvml.Calls() {
		if c.Op == nvmlfake.OpSetPowerLimit && c.UUID == uuid {
			count++
		}
	}
	return count
}

func (n *node) drainEvents() []string {
	var out []string
	for {
		select {
		case e := <-n.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func hasEvent(evs []string, reason string) bool {
	for _, e := range evs {
		if strings.Contains(e, " "+reason+" ") {
			return true
		}
	}
	return false
}

func TestFirstCapChangeAndRestore(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	if r := n.reconcile()[gpu[0]]; r.Action != ActionCap || n.limitW(gpu[0]) != 250 {
		t.Fatalf("first cap: action %s, limit %d W", r.Action, n.limitW(gpu[0]))
	}
	if o, ok := n.enforcer.Ledger.Get(gpu[0]); !ok || o.Original != 700_000 || o.Applied != 250_000 || o.Pending != 0 {
		t.Errorf("ledger after the first cap: %+v, %v", o, ok)
	}
	if evs := n.drainEvents(); !hasEvent(evs, ReasonApplied) {
		t.Errorf("events %q; want %s", evs, ReasonApplied)
	}
	// Steady state: no write.
	before := n.writes(gpu[0])
	if r := n.reconcile()[gpu[0]]; r.Action != ActionNone || n.writes(gpu[0]) != before {
		t.Errorf("steady state wrote: action %s", r.Action)
	}
	// The planner changes the limit.
	p.Annotations["dynamo.nvidia.com/gpu-power-limit"], p.Annotations["dynamo.nvidia.com/gpu-power-limit-validated"] = "300", "300"
	if r := n.reconcile()[gpu[0]]; r.Action != ActionChange || n.limitW(gpu[0]) != 300 {
		t.Fatalf("change: action %s, limit %d W", r.Action, n.limitW(gpu[0]))
	}
	// The pod goes: the original limit comes back and the GPU is forgotten.
	n.remove(p)
	if r := n.reconcile()[gpu[0]]; r.Action != ActionRestore || n.limitW(gpu[0]) != 700 {
		t.Fatalf("restore: action %s, limit %d W", r.Action, n.limitW(gpu[0]))
	}
	if _, ok := n.enforcer.Ledger.Get(gpu[0]); ok {
		t.Error("a restored GPU is still in the ledger")
	}
	if got := testutil.ToFloat64(n.metrics.restores.WithLabelValues(gpu[0])); got != 1 {
		t.Errorf("dynamo_power_agent_power_limit_restores_total = %v; want 1", got)
	}
	if got := testutil.ToFloat64(n.metrics.requested.WithLabelValues(gpu[0])); got != 0 {
		t.Errorf("requested watts after restore = %v; want 0", got)
	}
}

func TestRestoreOnAnnotationRemoval(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	n.reconcile()
	delete(p.Annotations, "dynamo.nvidia.com/gpu-power-limit")
	delete(p.Annotations, "dynamo.nvidia.com/gpu-power-limit-validated")
	if r := n.reconcile()[gpu[0]]; r.Action != ActionRestore || n.limitW(gpu[0]) != 700 {
		t.Errorf("annotation removed: action %s, limit %d W", r.Action, n.limitW(gpu[0]))
	}
}

func TestSharedGPUConflictLowestWins(t *testing.T) {
	n := newNode(t)
	n.run("a", "300", gpu[1])
	n.run("b", "250", gpu[1])
	n.reconcile()
	if got := n.limitW(gpu[1]); got != 250 {
		t.Errorf("limit %d W; want the lowest, 250", got)
	}
	evs := n.drainEvents()
	conflicts := 0
	for _, e := range evs {
		if strings.Contains(e, ReasonConflict) {
			conflicts++
		}
	}
	if conflicts != 2 {
		t.Errorf("events %q; want a %s on each of the two pods", evs, ReasonConflict)
	}
	n.reconcile()
	if evs := n.drainEvents(); len(evs) != 0 {
		t.Errorf("events repeated on the next cycle: %q", evs)
	}
}

func TestClampToNVMLConstraints(t *testing.T) {
	n := newNode(t)
	n.enforcer.RequireValidation = false
	p := testpod.MakePod("low", "llm").UID("uid-low").GPU(1).Limit("150").Obj()
	n.pods[p.UID] = p
	n.holders[gpu[0]] = sets.New(p.UID)
	r := n.reconcile()[gpu[0]]
	if !r.Clamped || n.limitW(gpu[0]) != 200 {
		t.Errorf("clamp: clamped %v, limit %d W; want 200", r.Clamped, n.limitW(gpu[0]))
	}
	if evs := n.drainEvents(); !hasEvent(evs, ReasonClamped) {
		t.Errorf("events %q; want %s", evs, ReasonClamped)
	}
}

func TestUnvalidatedLimitIsNotEnforced(t *testing.T) {
	n := newNode(t)
	p := testpod.MakePod("sneaky", "llm").UID("uid-sneaky").GPU(1).Limit("250").Obj()
	n.pods[p.UID] = p
	n.holders[gpu[0]] = sets.New(p.UID)
	n.reconcile()
	if n.writes(gpu[0]) != 0 {
		t.Error("an unstamped limit was written")
	}
	if evs := n.drainEvents(); !hasEvent(evs, ReasonNotValidated) {
		t.Errorf("events %q; want %s", evs, ReasonNotValidated)
	}
}

func TestForeignGPUNeverTouched(t *testing.T) {
	n := newNode(t)
	if err := n.nvml.SetLimitExternally(gpu[2], 400_000); err != nil {
		t.Fatal(err)
	}
	n.run("unlimited", "", gpu[2])
	n.reconcile()
	n.reconcile()
	if n.writes(gpu[2]) != 0 || n.limitW(gpu[2]) != 400 {
		t.Errorf("a GPU the agent never capped was written: %d writes, limit %d W", n.writes(gpu[2]), n.limitW(gpu[2]))
	}
}

func TestDriftIsRepaired(t *testing.T) {
	n := newNode(t)
	n.run("decode-0", "250", gpu[0])
	n.reconcile()
	if err := n.nvml.SetLimitExternally(gpu[0], 500_000); err != nil { // nvidia-smi -pl by someone
		t.Fatal(err)
	}
	if r := n.reconcile()[gpu[0]]; r.Action != ActionRepair || n.limitW(gpu[0]) != 250 {
		t.Errorf("drift: action %s, limit %d W", r.Action, n.limitW(gpu[0]))
	}
	if got := testutil.ToFloat64(n.metrics.repairs.WithLabelValues(gpu[0])); got != 1 {
		t.Errorf("dynamo_power_agent_drift_repairs_total = %v; want 1", got)
	}
	if got := testutil.ToFloat64(n.metrics.writes.WithLabelValues(gpu[0])); got != 2 {
		t.Errorf("dynamo_power_agent_power_limit_writes_total = %v; want 2 (cap, repair)", got)
	}
}

func TestNVMLFailureOnOneGPUSparesTheOthers(t *testing.T) {
	n := newNode(t)
	n.run("a", "250", gpu[0])
	n.run("b", "300", gpu[1])
	n.nvml.FailNext(nvmlfake.OpSetPowerLimit, gpu[0], nvmlctl.ErrNotPermitted)
	reports := n.reconcile()
	if r := reports[gpu[0]]; r.Err == nil || !errors.Is(r.Err, nvmlctl.ErrNotPermitted) {
		t.Errorf("GPU 0: %v; want the NVML permission error", r.Err)
	}
	if n.limitW(gpu[1]) != 300 {
		t.Errorf("GPU 1 limit %d W; want 300 despite GPU 0's failure", n.limitW(gpu[1]))
	}
	if _, ok := n.enforcer.Ledger.Get(gpu[0]); ok {
		t.Error("a GPU whose first write failed is recorded as ours")
	}
	if evs := n.drainEvents(); !hasEvent(evs, ReasonFailed) {
		t.Errorf("events %q; want %s", evs, ReasonFailed)
	}
	// The next cycle succeeds.
	if n.reconcile(); n.limitW(gpu[0]) != 250 {
		t.Errorf("retry: GPU 0 limit %d W; want 250", n.limitW(gpu[0]))
	}
}

func TestLostGPUSparesTheOthers(t *testing.T) {
	n := newNode(t)
	n.run("a", "250", gpu[0])
	n.run("b", "300", gpu[3])
	if err := n.nvml.LoseGPU(gpu[3]); err != nil {
		t.Fatal(err)
	}
	n.reconcile()
	if n.limitW(gpu[0]) != 250 {
		t.Errorf("GPU 0 limit %d W; want 250 despite the lost GPU", n.limitW(gpu[0]))
	}
}

func TestRestartAdoptsTheLedger(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	n.reconcile()
	writes := n.writes(gpu[0])
	n.restartAgent()
	n.reconcile()
	if n.writes(gpu[0]) != writes {
		t.Error("a restarted agent rewrote a cap it already had")
	}
	n.remove(p)
	if n.reconcile(); n.limitW(gpu[0]) != 700 {
		t.Errorf("after restart the original was not restored: %d W", n.limitW(gpu[0]))
	}
}

func TestCorruptLedgerNeverRestores(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	n.reconcile()
	if err := os.WriteFile(filepath.Join(n.dir, LedgerFile), []byte("{corrupt"), 0o600); err != nil {
		t.Fatal(err)
	}
	ledger, err := OpenLedger(n.dir)
	if err == nil {
		t.Fatal("corrupt ledger opened without an error")
	}
	n.enforcer = &Enforcer{NVML: n.nvml, Ledger: ledger, RequireValidation: true, Log: testr.New(t)}
	n.remove(p)
	writes := n.writes(gpu[0])
	n.reconcile()
	if n.writes(gpu[0]) != writes || n.limitW(gpu[0]) != 250 {
		t.Errorf("with a corrupt ledger the agent wrote to a GPU it cannot prove is its own: limit %d W", n.limitW(gpu[0]))
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	n := newNode(t)
	n.run("decode-0", "250", gpu[0])
	reports, err := n.enforcer.Reconcile(t.Context(), Inputs{GPUs: n.gpus(), Holders: n.holders, Pods: n.pods}, true)
	if err != nil {
		t.Fatal(err)
	}
	if reports[0].Action != ActionCap || reports[0].Desired != 250_000 {
		t.Errorf("dry run report %+v; want a 250 W cap", reports[0])
	}
	if n.writes(gpu[0]) != 0 || len(n.enforcer.Ledger.Owned()) != 0 {
		t.Error("a dry run wrote to a GPU or the ledger")
	}
}
