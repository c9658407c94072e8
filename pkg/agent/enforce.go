package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Event reasons on pods, the contract users grep for.
const (
	ReasonApplied      = "PowerLimitApplied"
	ReasonClamped      = "PowerLimitClamped"
	ReasonConflict     = "PowerLimitConflict"
	ReasonFailed       = "PowerLimitFailed"
	ReasonNotValidated = "PowerLimitNotValidated"
	ReasonUnallocated  = "UnallocatedGPUProcess"
	ReasonHeld         = "PowerLimitHeld"
)

// Action is what a reconcile does, or would do, to one GPU.
type Action string

// Actions on a GPU.
const (
	ActionNone    Action = "none"    // the limit is what it should be
	ActionCap     Action = "cap"     // first cap of a GPU the agent did not own
	ActionChange  Action = "change"  // a new limit on a GPU the agent owns
	ActionRepair  Action = "repair"  // someone else changed the agent's limit
	ActionRestore Action = "restore" // no limited pod holds it: give the original back
	ActionForget  Action = "forget"  // no limited pod holds it, original unknown: leave it
	ActionAdopt   Action = "adopt"   // no ledger on record, at a limit recognised as the agent's: own it
	ActionHold    Action = "hold"    // kubelet's allocation of it cannot be attributed this cycle: leave it as it is
	ActionError   Action = "error"   // NVML failed on this GPU
)

// GPUReport is what one reconcile found and did on a GPU; `inspect` prints it.
type GPUReport struct {
	Index  int
	UUID   string
	Name   string
	Limits nvmlctl.PowerLimits
	// Pods holding the GPU, as namespace/name.
	Pods []string
	// Desired is the limit the GPU should have; 0 when it should be left or
	// given back.
	Desired policy.Milliwatts
	Clamped bool
	// Conflict is set when the pods holding the GPU ask different limits.
	Conflict bool
	Action   Action
	Err      error
}

// GPUs are the node's GPUs as NVML listed them, once for a cycle.
type GPUs struct {
	Devices []nvmlctl.Device
	// Err is the listing's error for the GPUs that did not answer: they are
	// left out of Devices (nvmlctl.Library.Devices), and out of the ledger's
	// recovery (Ledger.Settle) this cycle.
	Err error
}

// ListGPUs lists the node's GPUs; it fails when NVML lists none.
func ListGPUs(nv nvmlctl.Library) (GPUs, error) {
	devices, err := nv.Devices()
	if len(devices) == 0 && err != nil {
		return GPUs{}, fmt.Errorf("list GPUs: %w", err)
	}
	return GPUs{Devices: devices, Err: err}, nil
}

// Inputs are the node's state that one reconcile reads.
type Inputs struct {
	// GPUs are the GPUs to reconcile (ListGPUs).
	GPUs GPUs
	// Holders maps a GPU UUID to the pods holding it (podmap.Build).
	Holders podmap.Holders
	// Pods are this node's non-terminal pods by UID.
	Pods map[types.UID]*corev1.Pod
	// Strays are processes on GPUs their pods were not allocated
	// (podmap.Build): reported, never obeyed.
	Strays []podmap.Stray
	// Frozen are GPUs whose holders are unknown this cycle, with why
	// (podmap.Build): each is left as it is.
	Frozen map[string]error
}

// EventRecorder records an Event on a pod, with the signature of client-go's
// events.k8s.io recorder: pkg/agent/events' Recorder and client-go's
// events.FakeRecorder (tests) implement it.
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Enforcer applies the pods' limits to the node's GPUs.
type Enforcer struct {
	NVML   nvmlctl.Library
	Ledger *Ledger
	// RequireValidation enforces only limits the webhook stamped.
	RequireValidation bool
	// SkippedNamespaces are the namespaces the webhook does not intercept
	// (policy.SkippedNamespaces unless configured otherwise). A stamp there
	// is not the webhook's, so with RequireValidation a limit there counts
	// as not validated.
	SkippedNamespaces sets.Set[string]
	// StampKey verifies the webhook's signature of each stamp; nil: stamps
	// are not signed. With it, a stamp without its valid signature is not
	// the webhook's (a pod created while the webhook was away) and, with
	// RequireValidation, its limit counts as not validated.
	StampKey policy.StampKey
	Recorder EventRecorder
	Log      logr.Logger
	// Metrics may be nil (inspect, tests).
	Metrics *Metrics

	mu sync.Mutex
	// told remembers what each pod was already told, so events come once
	// per change, not every cycle. Pods that left are dropped each cycle.
	told map[types.UID]map[string]bool
	// strays are the last reconcile's, so each is counted once.
	strays sets.Set[podmap.Stray]
}

// Reconcile brings every GPU of in.GPUs to its desired limit. With dryRun it only
// reports what it would do and writes nothing, to any GPU or to the ledger.
// An error on one GPU is reported on that GPU; the others go on.
func (e *Enforcer) Reconcile(ctx context.Context, in Inputs, dryRun bool) ([]GPUReport, error) {
	devices, listErr := in.GPUs.Devices, in.GPUs.Err
	reports := make([]GPUReport, 0, len(devices))
	var failed []error
	// evaluated are the GPUs read and decided without an error: recovery
	// ends for them alone.
	evaluated := make([]string, 0, len(devices))
	strays := sets.New[podmap.Stray]()
	for _, dev := range devices {
		if err := ctx.Err(); err != nil {
			return reports, err
		}
		r := e.reconcileGPU(dev, in, dryRun, strays)
		if !dryRun {
			e.record(r)
		}
		switch {
		case r.Err != nil:
			failed = append(failed, fmt.Errorf("GPU %d %s: %w", r.Index, r.UUID, r.Err))
		case r.Action != ActionHold:
			evaluated = append(evaluated, r.UUID)
		}
		reports = append(reports, r)
	}
	e.mu.Lock()
	for uid := range e.told {
		if _, ok := in.Pods[uid]; !ok {
			delete(e.told, uid)
		}
	}
	if !dryRun {
		e.strays = strays // only those reported: one on a GPU not reached is reported when it is
	}
	e.mu.Unlock()
	if !dryRun {
		e.recordHolders(in)
	}
	if !dryRun && len(devices) > 0 {
		var all []string
		if listErr == nil {
			for _, d := range devices {
				all = append(all, d.UUID)
			}
		}
		if err := e.Ledger.Settle(evaluated, all); err != nil {
			failed = append(failed, fmt.Errorf("write the ledger after recovery: %w", err))
		}
	}
	return reports, errors.Join(append(failed, listErr)...)
}

func (e *Enforcer) reconcileGPU(dev nvmlctl.Device, in Inputs, dryRun bool, strays sets.Set[podmap.Stray]) GPUReport {
	r := GPUReport{Index: dev.Index, UUID: dev.UUID, Name: dev.Name, Action: ActionNone}
	holders := e.holders(dev.UUID, in)
	pods := podsOf(holders, in.Pods)
	for _, h := range holders {
		r.Pods = append(r.Pods, h.Pod)
	}
	if !dryRun {
		e.reportStrays(dev, in, strays) // before NVML: a GPU whose limits do not read still has its strays said
	}
	limits, err := e.NVML.PowerLimits(dev.UUID)
	if err != nil {
		r.Action, r.Err = ActionError, fmt.Errorf("read power limits: %w", err)
		e.tellOnce(pods, "failed/"+dev.UUID+"/"+err.Error(), ReasonFailed,
			"Could not read the power limit of GPU %d (%s): %v", dev.Index, dev.UUID, err)
		return r
	}
	r.Limits = limits
	if why := in.Frozen[dev.UUID]; why != nil {
		r.Action = ActionHold
		if !dryRun {
			e.Log.V(1).Info("Left GPU as it is: kubelet's allocation of it cannot be attributed this cycle", "gpu", dev.Index, "uuid", dev.UUID,
				"limitWatts", limits.Current.WattsDown(), "reason", why.Error())
			e.tellOnce(pods, "held/"+dev.UUID+"/"+why.Error(), ReasonHeld,
				"The power limit of GPU %d (%s) is left as it is: %v", dev.Index, dev.UUID, why)
		}
		return r
	}
	d := policy.ResolveGPU(holders, e.RequireValidation)
	r.Conflict = d.Conflict
	e.explain(dev, d, in.Pods)
	own, owned := e.Ledger.Get(dev.UUID)

	if d.Cap == 0 {
		if !owned {
			return r // never capped by us: never touched
		}
		if own.Original == 0 {
			r.Action = ActionForget
			if !dryRun {
				e.Log.Info("Forgot GPU whose original power limit is unknown; leaving it as it is", "gpu", dev.Index, "uuid", dev.UUID,
					"limitWatts", limits.Current.WattsDown())
				r.Err = e.Ledger.Forget(dev.UUID)
			}
			return r
		}
		r.Action, r.Desired = ActionRestore, own.Original
		if !dryRun {
			r.Err = e.restore(dev, own, limits)
		}
		return r
	}

	target, clamped := policy.Clamp(d.Cap.MW(), limits.Min, limits.Max)
	r.Desired, r.Clamped = target, clamped
	ours := false
	if !owned {
		own.Original, ours = originalLimit(limits, askedLimits(d, limits), e.Ledger.RecoveringGPU(dev.UUID))
		if ours && !dryRun {
			e.Log.Info("Took the GPU's limit for a cap of this agent's: no ledger on record, and a pod holding it asks this limit; "+
				"its default comes back when its pods go", "gpu", dev.Index, "uuid", dev.UUID,
				"limitWatts", limits.Current.WattsDown(), "defaultWatts", limits.Default.WattsDown())
		}
	}
	if limits.Current == target {
		if ours {
			r.Action = ActionAdopt
			if !dryRun {
				r.Err = e.Ledger.Put(dev.UUID, Ownership{Original: own.Original, Applied: limits.Current})
			}
		}
		return r
	}
	switch {
	case !owned:
		r.Action = ActionCap
	case own.Applied == target:
		r.Action = ActionRepair
	default:
		r.Action = ActionChange
	}
	if dryRun {
		return r
	}
	deciding := podsOf(d.Deciding, in.Pods)
	if err := e.set(dev, own, owned, target, limits, r.Action, r.Pods); err != nil {
		r.Err = err
		e.tellOnce(deciding, fmt.Sprintf("failed/%s/%d/%v", dev.UUID, target, err), ReasonFailed,
			"Could not set the power limit of GPU %d (%s) to %d W: %v", dev.Index, dev.UUID, target.WattsDown(), err)
		return r
	}
	for _, p := range deciding {
		e.event(p, corev1.EventTypeNormal, ReasonApplied, "Set the power limit of GPU %d (%s) to %d W (was %d W)",
			dev.Index, dev.UUID, target.WattsDown(), limits.Current.WattsDown())
	}
	if clamped {
		for _, p := range deciding {
			e.event(p, corev1.EventTypeWarning, ReasonClamped, "Requested %d W is outside GPU %d's settable range %d-%d W; set %d W",
				d.Cap, dev.Index, limits.Min.WattsDown(), limits.Max.WattsDown(), target.WattsDown())
		}
	}
	return r
}

// record updates the GPU's metrics after a reconcile.
func (e *Enforcer) record(r GPUReport) {
	if e.Metrics == nil {
		return
	}
	applied := 0.0
	if own, ok := e.Ledger.Get(r.UUID); ok {
		applied = own.Applied.WattsExact()
	}
	draw := -1.0
	if d, err := e.NVML.PowerDraw(r.UUID); err == nil {
		draw = d.WattsExact()
	}
	e.Metrics.observe(r, applied, draw, r.Conflict)
	capped, err := e.NVML.PowerCapped(r.UUID)
	e.Metrics.powerCapped(r.UUID, capped, err)
}

// recordHolders exports which pods hold each GPU (every GPU kubelet's
// allocation names, whether or not NVML answered for it this cycle), and
// how many of them carry a limit that is not enforced for want of
// validation: the pods PowerLimitNotValidated is about, and those whose
// limit does not parse.
func (e *Enforcer) recordHolders(in Inputs) {
	if e.Metrics == nil {
		return
	}
	holding := sets.New[podOnGPU]()
	unvalidated := sets.New[types.UID]()
	for uuid := range in.Holders {
		hs := e.holders(uuid, in)
		for _, p := range podsOf(hs, in.Pods) {
			holding.Insert(podOnGPU{gpu: uuid, namespace: p.Namespace, pod: p.Name})
		}
		d := policy.ResolveGPU(hs, e.RequireValidation)
		for _, h := range slices.Concat(d.NotValidated, d.Invalid) {
			unvalidated.Insert(h.UID)
		}
	}
	e.Metrics.holders(holding, unvalidated.Len())
}

// originalLimit is the limit an unowned GPU is to get back when the pods
// that cap it go, and whether its limit is taken for a cap of the agent's own.
// A GPU's limit is the administrator's, kept and given back, except while the
// ledger is recovering (missing or corrupt, before the first reconcile) and
// the limit is off the default and equal to what an admitted pod holding the
// GPU asks (asked, clamped): that is a cap this agent's predecessor set and
// lost the record of, and the default is what it gets back.
func originalLimit(limits nvmlctl.PowerLimits, asked []policy.Milliwatts, recovering bool) (policy.Milliwatts, bool) {
	if recovering && limits.Default > 0 && limits.Current != limits.Default && slices.Contains(asked, limits.Current) {
		return limits.Default, true
	}
	return limits.Current, false
}

// askedLimits are the limits the deciding holders ask, clamped as the agent
// would write them.
func askedLimits(d policy.GPUDecision, limits nvmlctl.PowerLimits) []policy.Milliwatts {
	out := make([]policy.Milliwatts, 0, len(d.Deciding))
	for _, h := range d.Deciding {
		if w, ok := policy.ParseLimit(h.Limit); ok {
			mw, _ := policy.Clamp(w.MW(), limits.Min, limits.Max)
			out = append(out, mw)
		}
	}
	return out
}

// set writes a limit, recording the intent in the ledger first and the
// read-back value after, so a crash in between is recoverable. For a GPU the
// agent did not own, own holds the original limit alone.
func (e *Enforcer) set(dev nvmlctl.Device, own Ownership, owned bool, target policy.Milliwatts,
	limits nvmlctl.PowerLimits, action Action, pods []string) error {
	own.Pending = target
	if err := e.Ledger.Put(dev.UUID, own); err != nil {
		return fmt.Errorf("record intent before writing: %w", err) // no write we could not account for
	}
	if action == ActionRepair {
		e.Log.Info("Repairing power limit changed by someone else", "gpu", dev.Index, "uuid", dev.UUID,
			"fromWatts", limits.Current.WattsDown(), "toWatts", target.WattsDown())
	}
	e.Log.Info(fmt.Sprintf("Setting power limit to %dW (was %dW)", target.WattsDown(), limits.Current.WattsDown()),
		"gpu", dev.Index, "uuid", dev.UUID, "pods", pods)
	writeErr := e.NVML.SetPowerLimit(dev.UUID, target)
	after, readErr := e.NVML.PowerLimits(dev.UUID)
	own.Pending = 0
	switch {
	case readErr == nil:
		own.Applied = after.Current
	case writeErr == nil:
		own.Applied = target
	}
	if writeErr != nil && !owned && (readErr != nil || after.Current == limits.Current) {
		// Nothing changed on a GPU we never owned: it stays foreign.
		return errors.Join(fmt.Errorf("set power limit: %w", writeErr), e.Ledger.Forget(dev.UUID))
	}
	ledgerErr := e.Ledger.Put(dev.UUID, own)
	if writeErr != nil {
		return errors.Join(fmt.Errorf("set power limit: %w", writeErr), ledgerErr)
	}
	if readErr == nil && after.Current != target {
		return errors.Join(fmt.Errorf("power limit reads %d mW after setting %d mW", after.Current, target), ledgerErr)
	}
	return ledgerErr
}

// restore gives a GPU back the limit it had before the agent's first cap.
func (e *Enforcer) restore(dev nvmlctl.Device, own Ownership, limits nvmlctl.PowerLimits) error {
	if limits.Current != own.Original {
		own.Pending = own.Original
		if err := e.Ledger.Put(dev.UUID, own); err != nil {
			return fmt.Errorf("record intent before restoring: %w", err)
		}
		e.Log.Info(fmt.Sprintf("Restoring power limit to %dW (was %dW)", own.Original.WattsDown(), limits.Current.WattsDown()),
			"gpu", dev.Index, "uuid", dev.UUID)
		if err := e.NVML.SetPowerLimit(dev.UUID, own.Original); err != nil {
			return fmt.Errorf("restore power limit: %w", err) // still owned: retried next cycle
		}
	}
	return e.Ledger.Forget(dev.UUID)
}

// RestoreAll gives every GPU the agent owns its original limit back: on
// uninstall, or with --restore-on-exit.
func (e *Enforcer) RestoreAll() error {
	index := map[string]int{}
	devices, _ := e.NVML.Devices()
	for _, d := range devices {
		index[d.UUID] = d.Index
	}
	var errs []error
	for _, uuid := range e.Ledger.Owned() {
		own, _ := e.Ledger.Get(uuid)
		limits, err := e.NVML.PowerLimits(uuid)
		if err != nil {
			errs = append(errs, fmt.Errorf("GPU %s: read power limits: %w", uuid, err))
			continue
		}
		dev := nvmlctl.Device{UUID: uuid, Index: index[uuid]}
		if own.Original == 0 {
			errs = append(errs, e.Ledger.Forget(uuid))
			continue
		}
		if err := e.restore(dev, own, limits); err != nil {
			errs = append(errs, fmt.Errorf("GPU %s: %w", uuid, err))
		}
	}
	return errors.Join(errs...)
}

// reportStrays tells each pod with a process on dev that kubelet did not
// allocate it, once, and counts each such process once; it adds those of dev
// to seen.
func (e *Enforcer) reportStrays(dev nvmlctl.Device, in Inputs, seen sets.Set[podmap.Stray]) {
	for _, s := range in.Strays {
		if s.GPU != dev.UUID {
			continue
		}
		seen.Insert(s)
		e.mu.Lock()
		known := e.strays.Has(s)
		e.mu.Unlock()
		p, cached := in.Pods[s.Pod]
		if !known {
			e.Metrics.strayFound(dev.UUID)
			log := e.Log.WithValues("gpu", dev.Index, "uuid", dev.UUID, "pid", s.PID, "podUID", s.Pod)
			if cached {
				log = log.WithValues("pod", klog.KObj(p))
			}
			log.Info("Found a process on a GPU kubelet did not allocate to its pod; it does not count for the GPU's limit")
		}
		if cached {
			e.tellOnce([]*corev1.Pod{p}, "unallocated/"+dev.UUID, ReasonUnallocated,
				"A process of this pod runs on GPU %d (%s), which kubelet did not allocate to it; its power limit does not count there",
				dev.Index, dev.UUID)
		}
	}
}

// holders turns the pod UIDs holding a GPU into policy holders, sorted by
// pod; podsOf joins them back to their pods.
func (e *Enforcer) holders(uuid string, in Inputs) []policy.Holder {
	var hs []policy.Holder
	for uid := range in.Holders[uuid] {
		p, ok := in.Pods[uid]
		if !ok {
			continue // gone, finished, or not this node's
		}
		limit, hasLimit := p.Annotations[policy.AnnotationPowerLimit]
		stamp, hasStamp := p.Annotations[policy.AnnotationPowerLimitValidated]
		if e.SkippedNamespaces.Has(p.Namespace) || !e.signed(p, stamp) {
			stamp, hasStamp = "", false // the webhook never saw this pod: whoever wrote the stamp, it was not the webhook
		}
		hs = append(hs, policy.Holder{Pod: p.Namespace + "/" + p.Name, UID: p.UID, Limit: limit, Stamp: stamp, HasLimit: hasLimit, HasStamp: hasStamp})
	}
	slices.SortFunc(hs, func(a, b policy.Holder) int { return strings.Compare(a.Pod, b.Pod) })
	return hs
}

// signed reports whether a pod's stamp carries the webhook's signature (or
// stamps are not signed).
func (e *Enforcer) signed(p *corev1.Pod, stamp string) bool {
	return e.StampKey == nil || e.StampKey.Verify(p.Namespace, p.UID, p.CreationTimestamp.Time, stamp, p.Annotations[policy.AnnotationPowerLimitSignature])
}

// explain tells pods, once per change, why their limit does not count or
// what they share the GPU with.
func (e *Enforcer) explain(dev nvmlctl.Device, d policy.GPUDecision, pods map[types.UID]*corev1.Pod) {
	for _, p := range podsOf(d.NotValidated, pods) {
		if e.SkippedNamespaces.Has(p.Namespace) {
			e.tellOnce([]*corev1.Pod{p}, "unvalidated/"+p.Annotations[policy.AnnotationPowerLimit], ReasonNotValidated,
				"Power limit %q is not enforced on GPU %d: the power webhook does not intercept namespace %s, so no stamp there is its own",
				p.Annotations[policy.AnnotationPowerLimit], dev.Index, p.Namespace)
			continue
		}
		if stamp := p.Annotations[policy.AnnotationPowerLimitValidated]; stamp == p.Annotations[policy.AnnotationPowerLimit] && !e.signed(p, stamp) {
			e.tellOnce([]*corev1.Pod{p}, "unvalidated/"+p.Annotations[policy.AnnotationPowerLimit], ReasonNotValidated,
				"Power limit %q is not enforced on GPU %d: its stamp carries no valid signature of the power webhook (%s), so the webhook did not set it (was the pod created while the webhook was away?)",
				p.Annotations[policy.AnnotationPowerLimit], dev.Index, policy.AnnotationPowerLimitSignature)
			continue
		}
		e.tellOnce([]*corev1.Pod{p}, "unvalidated/"+p.Annotations[policy.AnnotationPowerLimit], ReasonNotValidated,
			"Power limit %q is not enforced on GPU %d: the power webhook did not validate it (%s is %q)",
			p.Annotations[policy.AnnotationPowerLimit], dev.Index, policy.AnnotationPowerLimitValidated, p.Annotations[policy.AnnotationPowerLimitValidated])
	}
	if d.Conflict {
		var asks []string
		for _, h := range d.Deciding {
			asks = append(asks, h.Pod+"="+h.Limit+"W")
		}
		for _, p := range podsOf(d.Deciding, pods) {
			e.tellOnce([]*corev1.Pod{p}, "conflict/"+strings.Join(asks, ","), ReasonConflict,
				"GPU %d (%s) is shared by pods asking for different limits (%s); the lowest, %d W, applies",
				dev.Index, dev.UUID, strings.Join(asks, ", "), d.Cap)
		}
	}
	if d.Cap > 0 {
		for _, p := range podsOf(d.Unlimited, pods) {
			e.tellOnce([]*corev1.Pod{p}, fmt.Sprintf("unlimited/%s/%d", dev.UUID, d.Cap), ReasonConflict,
				"Pod has no power limit but shares GPU %d (%s) with pods that cap it at %d W", dev.Index, dev.UUID, d.Cap)
		}
	}
}

// tellOnce records a Warning event on each pod that was not yet told key.
func (e *Enforcer) tellOnce(pods []*corev1.Pod, key, reason, note string, args ...any) {
	for _, p := range pods {
		e.mu.Lock()
		if e.told == nil {
			e.told = map[types.UID]map[string]bool{}
		}
		if e.told[p.UID] == nil {
			e.told[p.UID] = map[string]bool{}
		}
		seen := e.told[p.UID][key]
		e.told[p.UID][key] = true
		e.mu.Unlock()
		if !seen {
			e.event(p, corev1.EventTypeWarning, reason, note, args...)
		}
	}
}

func (e *Enforcer) event(p *corev1.Pod, eventType, reason, note string, args ...any) {
	if e.Recorder != nil {
		e.Recorder.Eventf(p, nil, eventType, reason, "SetPowerLimit", note, args...)
	}
}

// podsOf are the pods of holders, in their order: the one way a decision's
// holders are joined back to their pods.
func podsOf(hs []policy.Holder, pods map[types.UID]*corev1.Pod) []*corev1.Pod {
	out := make([]*corev1.Pod, 0, len(hs))
	for _, h := range hs {
		if p, ok := pods[h.UID]; ok {
			out = append(out, p)
		}
	}
	return out
}
