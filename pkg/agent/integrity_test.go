package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestOriginalLimit(t *testing.T) {
	h100 := nvmlctl.PowerLimits{Min: 200_000, Max: 700_000, Default: 700_000}
	at := func(mw policy.Milliwatts) nvmlctl.PowerLimits { l := h100; l.Current = mw; return l }
	tests := []struct {
		name       string
		limits     nvmlctl.PowerLimits
		asked      []policy.Milliwatts
		recovering bool
		want       policy.Milliwatts
		ours       bool
	}{
		{"at its default: the default", at(700_000), []policy.Milliwatts{250_000}, true, 700_000, false},
		{"ledger on record: an administrator's cap is kept", at(250_000), []policy.Milliwatts{250_000}, false, 250_000, false},
		{"no ledger, at a holder's admitted limit: the agent's lost cap", at(250_000), []policy.Milliwatts{250_000}, true, 700_000, true},
		{"no ledger, at one of several holders' limits", at(300_000), []policy.Milliwatts{250_000, 300_000}, true, 700_000, true},
		{"no ledger, at a limit no holder asks: an administrator's", at(400_000), []policy.Milliwatts{250_000}, true, 400_000, false},
		{"no ledger, no admitted holder: an administrator's", at(250_000), nil, true, 250_000, false},
		{"no default reported: never guessed", nvmlctl.PowerLimits{Min: 200_000, Max: 700_000, Current: 250_000}, []policy.Milliwatts{250_000}, true, 250_000, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ours := originalLimit(tt.limits, tt.asked, tt.recovering)
			if got != tt.want || ours != tt.ours {
				t.Errorf("originalLimit = %d, %v; want %d, %v", got, ours, tt.want, tt.ours)
			}
		})
	}
}

// wipeLedger removes the host folder's ledger and starts a new agent, as
// after the ledger was lost while GPUs stayed capped. The state directory's
// marker stays: a folder wiped whole is a first install
// (TestWipedStateDirIsAFirstInstall).
func (n *node) wipeLedger() {
	n.t.Helper()
	if err := os.Remove(filepath.Join(n.dir, LedgerFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		n.t.Fatal(err)
	}
	n.restartAgent()
}

func TestLostLedgerGivesTheDefaultBack(t *testing.T) {
	t.Run("pod still there at its limit: adopted, default back when it goes", func(t *testing.T) {
		n := newNode(t)
		p := n.run("decode-0", "250", gpu[0])
		n.reconcile()
		n.wipeLedger()
		writes := n.writes(gpu[0])
		if r := n.reconcile()[gpu[0]]; r.Action != ActionAdopt || n.writes(gpu[0]) != writes {
			t.Fatalf("after a wiped ledger: action %s, %d writes", r.Action, n.writes(gpu[0])-writes)
		}
		if got := testutil.ToFloat64(n.metrics.adoptions.WithLabelValues(gpu[0])); got != 1 {
			t.Errorf("adoptions = %v; want 1", got)
		}
		n.remove(p)
		if r := n.reconcile()[gpu[0]]; r.Action != ActionRestore || n.limitW(gpu[0]) != 700 {
			t.Errorf("pod gone: action %s, limit %d W; want the default, 700 W", r.Action, n.limitW(gpu[0]))
		}
	})
	t.Run("a lower limit arrives with the lost cap's pod: the write records the default", func(t *testing.T) {
		n := newNode(t)
		p := n.run("decode-0", "250", gpu[0])
		n.reconcile()
		n.wipeLedger()
		q := n.run("decode-1", "200", gpu[0])
		if r := n.reconcile()[gpu[0]]; r.Action != ActionCap || n.limitW(gpu[0]) != 200 {
			t.Fatalf("action %s, limit %d W; want a 200 W cap", r.Action, n.limitW(gpu[0]))
		}
		if o, ok := n.enforcer.Ledger.Get(gpu[0]); !ok || o.Original != 700_000 {
			t.Errorf("ledger %+v, %v; want the default as the original", o, ok)
		}
		n.remove(p)
		n.remove(q)
		if n.reconcile(); n.limitW(gpu[0]) != 700 {
			t.Errorf("pods gone: GPU 0 at %d W; want the default", n.limitW(gpu[0]))
		}
	})
	t.Run("recovery ends with the first cycle: a later match is an administrator's", func(t *testing.T) {
		n := newNode(t)
		n.reconcile()
		if err := n.nvml.SetLimitExternally(gpu[2], 250_000); err != nil {
			t.Fatal(err)
		}
		p := n.run("decode-0", "250", gpu[2])
		if r := n.reconcile()[gpu[2]]; r.Action != ActionNone {
			t.Errorf("action %s; want none", r.Action)
		}
		n.remove(p)
		if n.reconcile(); n.limitW(gpu[2]) != 250 {
			t.Errorf("GPU 2 at %d W; want the administrator's 250 W", n.limitW(gpu[2]))
		}
	})
	t.Run("an administrator's cap is kept when the ledger is on record", func(t *testing.T) {
		n := newNode(t)
		n.reconcile() // a first cycle: the ledger is on record from now on
		if err := n.nvml.SetLimitExternally(gpu[1], 250_000); err != nil {
			t.Fatal(err)
		}
		n.restartAgent()
		p := n.run("decode-0", "250", gpu[1]) // asks exactly the administrator's cap
		if r := n.reconcile()[gpu[1]]; r.Action != ActionNone {
			t.Errorf("action %s on an administrator's cap equal to the pod's limit; want none", r.Action)
		}
		n.remove(p)
		n.reconcile()
		if n.limitW(gpu[1]) != 250 || n.writes(gpu[1]) != 0 {
			t.Errorf("the administrator's 250 W cap became %d W", n.limitW(gpu[1]))
		}
	})
	t.Run("an administrator's cap no pod asks is kept even without a ledger", func(t *testing.T) {
		n := newNode(t)
		if err := n.nvml.SetLimitExternally(gpu[1], 400_000); err != nil {
			t.Fatal(err)
		}
		p := n.run("decode-0", "250", gpu[1])
		n.reconcile()
		n.remove(p)
		n.reconcile()
		if n.limitW(gpu[1]) != 400 {
			t.Errorf("GPU at %d W after its pod left; want the administrator's 400 W", n.limitW(gpu[1]))
		}
	})
}

func TestStrayProcessIsReportedNeverObeyed(t *testing.T) {
	n := newNode(t)
	n.run("victim", "", gpu[0]) // allocated GPU 0, no limit
	sneaky := testpod.MakePod("sneaky", "llm").UID("0b6a4e2c-1111-4c8e-9a57-000000000001").Limit("200").Stamp("200").Obj()
	n.pods[sneaky.UID] = sneaky // asked no GPU; NVIDIA_VISIBLE_DEVICES=all
	strays := []podmap.Stray{{GPU: gpu[0], PID: 4242, Pod: sneaky.UID}, {GPU: gpu[1], PID: 4242, Pod: sneaky.UID}}
	for range 3 {
		if _, err := n.enforcer.Reconcile(t.Context(), Inputs{GPUs: n.gpus(), Holders: n.holders, Pods: n.pods, Strays: strays}, false); err != nil {
			t.Fatal(err)
		}
	}
	if n.writes(gpu[0])+n.writes(gpu[1]) != 0 {
		t.Errorf("a stray process set a cap: %d W, %d W", n.limitW(gpu[0]), n.limitW(gpu[1]))
	}
	evs := n.drainEvents()
	unallocated := 0
	for _, e := range evs {
		if strings.Contains(e, ReasonUnallocated) {
			unallocated++
		}
	}
	if unallocated != 2 {
		t.Errorf("events %q; want one %s per GPU, once", evs, ReasonUnallocated)
	}
	for _, g := range gpu[:2] {
		if got := testutil.ToFloat64(n.metrics.unallocated.WithLabelValues(g)); got != 1 {
			t.Errorf("dynamo_power_agent_unallocated_processes_total{gpu=%s} = %v; want 1 (counted once)", g, got)
		}
	}
}

// kubeletWith serves PodResources answers and errors a test sets.
type kubeletWith struct {
	pods []podmap.PodDevices
	err  error
}

func (k *kubeletWith) List(context.Context) ([]podmap.PodDevices, error) { return k.pods, k.err }

func TestRunnerAttribution(t *testing.T) {
	uid := "0b6a4e2c-1111-4c8e-9a57-000000000009"
	proc := fstest.MapFS{"4242/cgroup": {Data: []byte("0::/kubepods/pod" + uid + "/abc\n")}}
	unavailable := fmt.Errorf("%w: no socket at /x", podmap.ErrPodResourcesUnavailable)
	tests := []struct {
		name    string
		kubelet []error // each cycle's PodResources error
		require bool
		want    []int64 // GPU 0's limit after each cycle, W
		failed  []bool
	}{
		{"PodResources answers: the stray process sets nothing", []error{nil}, false, []int64{700}, []bool{false}},
		{"no PodResources: NVML-only fallback", []error{unavailable}, false, []int64{250}, []bool{false}},
		{"no PodResources, --require-pod-resources: nothing changes", []error{unavailable}, true, []int64{700}, []bool{true}},
		{"kubelet not answering: nothing changes", []error{errors.New("connection refused")}, false, []int64{700}, []bool{true}},
		{"socket gone after PodResources answered: a restarting kubelet, frozen", []error{nil, unavailable}, false, []int64{700, 700}, []bool{false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t)
			p := testpod.MakePod("sneaky", "llm").UID(uid).Limit("250").Stamp("250").Obj()
			if err := n.nvml.SetProcesses(gpu[0], nvmlctl.Process{Kind: nvmlctl.Compute, PID: 4242}); err != nil {
				t.Fatal(err)
			}
			k := &kubeletWith{}
			r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: k, RequirePodResources: tt.require,
				Proc: proc, Interval: time.Minute, Log: testr.New(t)}
			for i, err := range tt.kubelet {
				k.err = err
				cycleErr := r.Cycle(t.Context())
				if (cycleErr != nil) != tt.failed[i] {
					t.Errorf("cycle %d: %v; want failed %v", i, cycleErr, tt.failed[i])
				}
				if got := n.limitW(gpu[0]); got != tt.want[i] {
					t.Errorf("cycle %d: GPU 0 at %d W; want %d W", i, got, tt.want[i])
				}
			}
			if tt.require && r.Ready(nil) == nil {
				t.Error("ready while refusing the fallback")
			}
		})
	}
}

// TestRecreatedPodDoesNotInheritItsPredecessorsGPUs: kubelet still lists the
// old pod's GPU under the name when the new pod (same name, new UID) reaches
// the cache; the new pod's limit must not cap that GPU until kubelet shows
// the allocation is the new pod's.
func TestRecreatedPodDoesNotInheritItsPredecessorsGPUs(t *testing.T) {
	n := newNode(t)
	started := metav1.Now()
	old := testpod.MakePod("worker-0", "llm").UID("uid-old").Limit("300").Stamp("300").Obj()
	old.Status.StartTime = &started
	entry := func(g string) []podmap.PodDevices {
		return []podmap.PodDevices{{Namespace: "llm", Name: "worker-0", Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: g}}}}
	}
	k := &kubeletWith{pods: entry(gpu[0])}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{old}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 300 {
		t.Fatalf("old pod: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	// Re-created with a lower limit; kubelet has not re-listed.
	recreated := testpod.MakePod("worker-0", "llm").UID("uid-new").Limit("200").Stamp("200").Obj()
	r.Pods = podList{recreated}
	if err := r.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := n.limitW(gpu[0]); got == 200 {
		t.Fatalf("the re-created pod's limit capped its predecessor's GPU")
	}
	// kubelet allocates GPU 1 to the new pod and starts it.
	k.pods = entry(gpu[1])
	recreated.Status.StartTime = &started
	if err := r.Cycle(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n.limitW(gpu[1]) != 200 || n.limitW(gpu[0]) != 700 {
		t.Errorf("after kubelet re-listed: GPU 0 at %d W (want 700), GPU 1 at %d W (want 200)", n.limitW(gpu[0]), n.limitW(gpu[1]))
	}
}

// The lost-ledger rule, per GPU: a reconcile in the recovery window in which
// NVML fails on a GPU ends recovery for the others alone. Otherwise the
// agent's own stale cap on that GPU would be taken for an administrator's
// and never given back.
func TestRecoveryGoesOnForAGPUNVMLCouldNotRead(t *testing.T) {
	n := newNode(t)
	p := n.run("decode-0", "250", gpu[0])
	n.reconcile()
	n.wipeLedger()
	n.nvml.FailNext(nvmlfake.OpPowerLimits, gpu[0], errors.New("NVML: timeout"))
	n.reconcile() // recovery cycle: GPU 0 unreadable, still recovering
	n.reconcile() // GPU 0 readable: 250 W is the lost cap, adopted
	n.remove(p)
	n.reconcile()
	if got := n.limitW(gpu[0]); got != 700 {
		t.Errorf("the agent's own cap outlived its pod for good: GPU 0 at %d W, want its default 700 W", got)
	}
}

// The lost-ledger rule cannot be tenant-steered on a first install: an
// administrator's cap is readable from inside any GPU container (nvidia-smi
// -q -d POWER), and a tenant asking exactly that value must not make the
// agent adopt it as its own and give the default back when the pod goes. A
// state directory without its marker was never used: nothing is recovered.
func TestFirstInstallNeverTakesAnAdministratorsCapForTheAgents(t *testing.T) {
	n := newNode(t) // first install: no ledger on record
	if err := n.nvml.SetLimitExternally(gpu[3], 400_000); err != nil {
		t.Fatal(err)
	}
	p := n.run("copycat", "400", gpu[3])
	n.reconcile()
	n.remove(p)
	n.reconcile()
	if got := n.limitW(gpu[3]); got != 400 {
		t.Errorf("a tenant's pod undid the administrator's 400 W cap: GPU 3 at %d W", got)
	}
}

// A stray on a GPU whose limits NVML cannot read is still reported (counted
// once, the pod told), not remembered as known and never said.
func TestStrayOnAnUnreadableGPUIsStillReported(t *testing.T) {
	n := newNode(t)
	sneaky := testpod.MakePod("sneaky", "llm").UID("0b6a4e2c-1111-4c8e-9a57-000000000001").Obj()
	n.pods[sneaky.UID] = sneaky
	strays := []podmap.Stray{{GPU: gpu[0], PID: 4242, Pod: sneaky.UID}}
	n.nvml.FailNext(nvmlfake.OpPowerLimits, gpu[0], errors.New("NVML: timeout"))
	for range 2 {
		_, _ = n.enforcer.Reconcile(t.Context(), Inputs{GPUs: n.gpus(), Holders: n.holders, Pods: n.pods, Strays: strays}, false)
	}
	if got := testutil.ToFloat64(n.metrics.unallocated.WithLabelValues(gpu[0])); got != 1 {
		t.Errorf("dynamo_power_agent_unallocated_processes_total{gpu=%s} = %v; want 1", gpu[0], got)
	}
	if evs := n.drainEvents(); !slices.ContainsFunc(evs, func(e string) bool { return strings.Contains(e, ReasonUnallocated) }) {
		t.Errorf("events %q; want a %s warning", evs, ReasonUnallocated)
	}
}
