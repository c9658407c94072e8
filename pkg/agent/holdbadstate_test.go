package agent

// What the agent does with an allocation it cannot attribute: it changes no
// GPU it cannot tie to one pod's admitted limit, and gives none back.

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func startedPod(name, uid, limit string) *corev1.Pod {
	started := metav1.Now()
	w := testpod.MakePod(name, "llm").UID(uid).GPU(1)
	if limit != "" {
		w.Limit(limit).Stamp(limit)
	}
	p := w.Obj()
	p.Status.StartTime = &started
	return p
}

func listed(name string, refs ...podmap.DeviceRef) podmap.PodDevices {
	return podmap.PodDevices{Namespace: "llm", Name: name, Devices: refs}
}

// A PodResources answer whose device ID does not parse (a device plugin
// spelling the parser refuses) is bad host state. The pod still holds its
// device (podmap.PodDevices.Invalid says so), which may be any GPU: the cycle
// fails, every GPU keeps its limit, and the pod is told why.
func TestUnparsableDeviceIDFreezesEveryGPU(t *testing.T) {
	n := newNode(t)
	p := startedPod("worker-0", "uid-w0", "250")
	k := &kubeletWith{pods: []podmap.PodDevices{listed("worker-0", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpu[0]})}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 250 {
		t.Fatalf("setup: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	_, parseErr := podmap.ParseDeviceID(policy.ResourceGPU, "GPU-F4CE0000-0000-4000-9000-000000000000") // upper case
	if parseErr == nil {
		t.Fatal("expected the upper-case UUID to be refused")
	}
	k.pods = []podmap.PodDevices{{Namespace: "llm", Name: "worker-0", Invalid: []error{parseErr}}}
	err := r.Cycle(t.Context())
	if got := n.limitW(gpu[0]); got != 250 {
		t.Errorf("an unparsable device ID for a running pod changed a GPU: GPU 0 at %d W, want its 250 W cap kept (cycle error: %v)", got, err)
	}
	if err == nil || !strings.Contains(err.Error(), "cannot be tied to a GPU") {
		t.Errorf("a cycle over an unparsable PodResources answer: error %v; want one saying a device cannot be tied to a GPU", err)
	}
	if got := testutil.ToFloat64(n.metrics.frozen); got != 1 {
		t.Errorf("dynamo_power_agent_frozen_reconciles_total = %v; want 1", got)
	}
	if evs := n.drainEvents(); !slices.ContainsFunc(evs, func(e string) bool { return strings.Contains(e, ReasonHeld) }) {
		t.Errorf("events %q; want a %s warning on the pod", evs, ReasonHeld)
	}
}

// An NVML error resolving a MIG device to its board (one cycle) changes no
// GPU: the MIG pod would hold nothing that cycle, its board would be
// restored, then capped again the cycle after.
func TestFailedMIGParentLookupFreezesEveryGPU(t *testing.T) {
	n := newNode(t)
	mig := nvmlfake.MIGUUID(0, 1)
	if err := n.nvml.Update(gpu[0], func(g *nvmlfake.GPU) { g.MIGEnabled, g.MIGDevices = true, []string{mig} }); err != nil {
		t.Fatal(err)
	}
	p := startedPod("mig-0", "uid-m0", "250")
	k := &kubeletWith{pods: []podmap.PodDevices{listed("mig-0", podmap.DeviceRef{Kind: podmap.KindMIG, UUID: mig})}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 250 {
		t.Fatalf("setup: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	n.nvml.FailNext(nvmlfake.OpMIGParent, mig, errors.New("NVML: unknown error"))
	err := r.Cycle(t.Context())
	if got := n.limitW(gpu[0]); got != 250 || err == nil {
		t.Errorf("one failed MIG parent lookup: GPU 0 at %d W, cycle error %v; want 250 W kept and the cycle failed", got, err)
	}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 250 || n.writes(gpu[0]) != 1 {
		t.Errorf("lookup answers again: %v, GPU 0 at %d W after %d writes; want 250 W, written once", err, n.limitW(gpu[0]), n.writes(gpu[0]))
	}
}

// kubelet listing one name twice is an answer the agent cannot attribute:
// the GPUs those entries name are left as they are, not given back under the
// running pod.
func TestNameListedTwiceLeavesItsGPUAsItIs(t *testing.T) {
	n := newNode(t)
	p := startedPod("worker-0", "uid-w0", "250")
	e := listed("worker-0", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpu[0]})
	k := &kubeletWith{pods: []podmap.PodDevices{e}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{p}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 250 {
		t.Fatalf("setup: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	k.pods = []podmap.PodDevices{e, e} // a buggy kubelet / device plugin
	err := r.Cycle(t.Context())
	if got := n.limitW(gpu[0]); got != 250 {
		t.Errorf("a name listed twice gave its GPU back under the running pod: GPU 0 at %d W, want 250 W kept (cycle error: %v)", got, err)
	}
}

// Identity by UID, the other direction of the re-created name: the agent's
// pod cache lags kubelet (the DELETE of the old pod not yet seen), while
// kubelet already lists the name with the new pod's allocation. A started
// pod's allocation never changes, so a name whose devices changed is another
// pod's entry: the old pod's limit must not cap the successor's GPU.
func TestChangedDevicesUnderAStartedPodAreAnotherPodsEntry(t *testing.T) {
	n := newNode(t)
	old := startedPod("worker-0", "uid-old", "300")
	k := &kubeletWith{pods: []podmap.PodDevices{listed("worker-0", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpu[0]})}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{old}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 300 {
		t.Fatalf("setup: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	// kubelet: old pod gone, successor (no limit) admitted on GPU 1; the
	// agent's cache still holds the old pod.
	k.pods = []podmap.PodDevices{listed("worker-0", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpu[1]})}
	_ = r.Cycle(t.Context())
	if got := n.limitW(gpu[1]); got != 700 {
		t.Errorf("the old pod's 300 W limit capped GPU 1, which kubelet allocated to its successor: GPU 1 at %d W", got)
	}
}

// A whole GPU (no replica suffix) listed for two live pods is impossible for
// a correct kubelet: the GPU is left as it is and its pods are told, rather
// than the lowest limit capping it.
func TestWholeGPUListedForTwoPodsIsLeftAsItIs(t *testing.T) {
	n := newNode(t)
	a, b := startedPod("worker-0", "uid-w0", "300"), startedPod("worker-1", "uid-w1", "200")
	whole := podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpu[0]}
	k := &kubeletWith{pods: []podmap.PodDevices{listed("worker-0", whole)}}
	r := &Runner{Enforcer: n.enforcer, Pods: podList{a, b}, PodResources: k, Interval: time.Minute, Log: testr.New(t)}
	if err := r.Cycle(t.Context()); err != nil || n.limitW(gpu[0]) != 300 {
		t.Fatalf("setup: %v, GPU 0 at %d W", err, n.limitW(gpu[0]))
	}
	n.drainEvents()
	k.pods = append(k.pods, listed("worker-1", whole))
	if err := r.Cycle(t.Context()); err != nil {
		t.Fatalf("cycle: %v", err)
	}
	if got := n.limitW(gpu[0]); got != 300 {
		t.Errorf("GPU 0 at %d W; want the 300 W it had, left as it is", got)
	}
	if evs := n.drainEvents(); len(evs) != 2 || !strings.Contains(evs[0], ReasonHeld) || !strings.Contains(evs[0], "allocated whole, for 2 pods") {
		t.Errorf("events %q; want a %s warning on each pod", evs, ReasonHeld)
	}
	if got := testutil.ToFloat64(n.metrics.holds.WithLabelValues(gpu[0])); got != 1 {
		t.Errorf("dynamo_power_agent_power_limit_holds_total = %v; want 1", got)
	}
}
