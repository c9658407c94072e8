package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

// PodResources lists the devices kubelet allocated to pods; podmap's client
// and test fakes implement it.
type PodResources interface {
	List(ctx context.Context) ([]podmap.PodDevices, error)
}

// PodLister lists this node's pods. client-go's pod lister over the node's
// informer implements it, and test fakes do. The pods are the cache's own:
// read them, never change them.
type PodLister interface {
	List(selector labels.Selector) ([]*corev1.Pod, error)
}

// Runner runs the enforcer: on pod events (debounced) and every Interval.
// It reads pods from a cache restricted to this node, so a cycle costs no
// API request; while that cache is not synced, or kubelet does not answer,
// it changes nothing.
type Runner struct {
	Enforcer   *Enforcer
	Pods       PodLister
	PodsSynced func() bool
	// Slices are the node's ResourceSlices (nil without DRA): the GPUs of
	// the devices NVIDIA's DRA driver allocates (podmap.DRAResolver).
	Slices func() []*resourcev1.ResourceSlice
	// APIReachable checks the API server answers. A cache keeps serving its
	// last state when the API server is gone, and pods deleted meanwhile would
	// still look like they hold their GPUs (or the reverse), so the agent
	// freezes instead.
	APIReachable func(context.Context) error
	PodResources PodResources
	// RequirePodResources refuses the NVML-only fallback: a kubelet without
	// PodResources then freezes every GPU instead.
	RequirePodResources bool
	// Proc is the host's /proc (the agent runs with hostPID).
	Proc     fs.FS
	Interval time.Duration
	// Debounce groups a burst of pod events into one cycle.
	Debounce time.Duration
	Log      logr.Logger

	trigger chan struct{}
	once    sync.Once
	pids    podmap.PIDCache
	names   podmap.Identities
	// allocated is set once kubelet's PodResources answered: a kubelet that
	// has it does not lose it, so a missing socket later is a kubelet
	// restarting, not one without PodResources.
	allocated bool
	// nvmlOnly is the mode of the last cycle, to log each change once.
	nvmlOnly bool

	mu     sync.Mutex
	lastOK time.Time
}

func (r *Runner) init() { r.once.Do(func() { r.trigger = make(chan struct{}, 1) }) }

// Trigger asks for a cycle soon; pod event handlers call it.
func (r *Runner) Trigger() {
	r.init()
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run runs cycles until ctx is done.
func (r *Runner) Run(ctx context.Context) {
	r.init()
	tick := time.NewTicker(r.Interval)
	defer tick.Stop()
	for {
		if err := r.Cycle(ctx); err != nil && ctx.Err() == nil {
			r.Log.Error(err, "Reconcile did not complete; will retry")
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.trigger:
			select { // let the rest of a burst arrive
			case <-time.After(r.Debounce):
			case <-ctx.Done():
				return
			}
		}
	}
}

// Ready passes when a full cycle succeeded within the last three intervals.
func (r *Runner) Ready(*http.Request) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastOK.IsZero() {
		return errors.New("no full reconcile has succeeded yet")
	}
	if age := time.Since(r.lastOK); age > 3*r.Interval {
		return fmt.Errorf("last full reconcile succeeded %s ago (more than 3 intervals)", age.Round(time.Second))
	}
	return nil
}

// Cycle gathers the node's state and reconciles every GPU once. A cycle that
// completes without an error sets the time readiness and
// dynamo_power_agent_last_successful_reconcile_timestamp_seconds read.
func (r *Runner) Cycle(ctx context.Context) error {
	r.Enforcer.Metrics.cycleStarted(r.Interval)
	in, err := r.Gather(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	_, err = r.Enforcer.Reconcile(ctx, in, false)
	end := time.Now()
	r.Enforcer.Metrics.reconciled(end.Sub(start))
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.lastOK = end
	r.mu.Unlock()
	r.Enforcer.Metrics.cycleSucceeded(end)
	return nil
}

// Gather reads which pods hold which GPU. It fails, and so freezes the GPUs,
// when the pod cache is not synced or kubelet does not answer: acting on a
// partial view would give GPUs back under running pods.
func (r *Runner) Gather(ctx context.Context) (Inputs, error) {
	if r.PodsSynced != nil && !r.PodsSynced() {
		return Inputs{}, errors.New("pod cache not synced; changing nothing")
	}
	if r.APIReachable != nil {
		if err := r.APIReachable(ctx); err != nil {
			return Inputs{}, fmt.Errorf("API server unreachable: %w; changing nothing", err)
		}
	}
	list, err := r.Pods.List(labels.Everything())
	if err != nil {
		return Inputs{}, fmt.Errorf("list pods from the cache: %w", err)
	}
	pods := make(map[types.UID]*corev1.Pod, len(list))
	cached := make([]podmap.CachedPod, 0, len(list))
	for _, p := range list {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		pods[p.UID] = p
		cached = append(cached, podmap.CachedPod{Namespace: p.Namespace, Name: p.Name, UID: p.UID, Started: p.Status.StartTime != nil})
	}
	allocated, nvmlOnly, err := r.allocation(ctx)
	if err != nil {
		return Inputs{}, err
	}

	nv := r.Enforcer.NVML
	gpus, err := ListGPUs(nv)
	if err != nil {
		return Inputs{}, err
	}
	byIndex := make(map[int]string, len(gpus.Devices))
	var procs []podmap.Process
	for _, d := range gpus.Devices {
		byIndex[d.Index] = d.UUID
		ps, err := nv.Processes(d.UUID)
		if err != nil {
			r.Log.V(2).Info("Could not list GPU processes; using kubelet's allocation alone", "gpu", d.Index, "uuid", d.UUID, "err", err.Error())
			continue
		}
		for _, p := range ps {
			procs = append(procs, podmap.Process{GPU: d.UUID, PID: p.PID})
		}
	}
	owners, withheld := r.names.Join(cached, allocated)
	r.reportTwiceListed(allocated, withheld, pods)
	for name, uid := range withheld {
		r.Log.V(1).Info("Withheld kubelet's entry for a pod name: it cannot be told to be the cached pod's this cycle; its GPUs are left as they are",
			"pod", name, "podUID", uid)
	}
	res := podmap.Build(podmap.Sources{
		Pods:     allocated,
		Owners:   owners,
		Withheld: withheld,
		NVMLOnly: nvmlOnly,
		Resolver: podmap.Resolver{
			MIGParent: nv.MIGParent,
			DRADevice: podmap.DRAResolver(r.slices()),
			GPUByIndex: func(i int) (string, error) {
				if uuid, ok := byIndex[i]; ok {
					return uuid, nil
				}
				return "", fmt.Errorf("no GPU with index %d", i)
			},
		},
		Processes: procs,
		Proc:      r.Proc,
		Cache:     &r.pids,
	})
	for _, err := range res.Skipped {
		r.Log.V(2).Info("Skipped a process while mapping GPUs to pods", "err", err.Error())
	}
	if err := r.unattributable(res.Unattributable, pods); err != nil {
		return Inputs{}, err
	}
	return Inputs{GPUs: gpus, Holders: res.Holders, Pods: pods, Strays: res.Strays, Frozen: res.Frozen}, nil
}

func (r *Runner) slices() []*resourcev1.ResourceSlice {
	if r.Slices == nil {
		return nil
	}
	return r.Slices()
}

// reportTwiceListed tells a pod whose name kubelet lists twice, which a
// correct kubelet never does, that its GPUs are left as they are.
func (r *Runner) reportTwiceListed(listed []podmap.PodDevices, withheld map[string]types.UID, pods map[types.UID]*corev1.Pod) {
	times := make(map[string]int, len(listed))
	for _, p := range listed {
		times[p.Namespace+"/"+p.Name]++
	}
	for name, n := range times {
		p, ok := pods[withheld[name]]
		if n < 2 || !ok {
			continue
		}
		r.Enforcer.tellOnce([]*corev1.Pod{p}, "twice", ReasonHeld,
			"kubelet lists this pod %d times in PodResources; the power limits of its GPUs are left as they are until it lists it once", n)
		r.Log.V(1).Info("Found a pod kubelet lists more than once; leaving its GPUs as they are", "pod", klog.KObj(p), "times", n)
	}
}

// unattributable fails the cycle, and so freezes every GPU, when kubelet lists
// a device of a pod that cannot be tied to a GPU (an ID that does not parse,
// a MIG device or index NVML cannot resolve now): that device may be any
// GPU, and acting without it would give a GPU back under its running pod, or
// flap it. Each pod is told once; the cycle is counted.
func (r *Runner) unattributable(devices []podmap.Unattributed, pods map[types.UID]*corev1.Pod) error {
	if len(devices) == 0 {
		return nil
	}
	errs := make([]error, 0, len(devices))
	for _, d := range devices {
		errs = append(errs, d.Err)
		if p, ok := pods[d.Pod]; ok {
			r.Enforcer.tellOnce([]*corev1.Pod{p}, "unattributable/"+d.Err.Error(), ReasonHeld,
				"No GPU power limit on this node changes while kubelet lists a device of this pod that the power agent cannot tie to a GPU: %v", d.Err)
		}
	}
	r.Enforcer.Metrics.frozenReconcile()
	return fmt.Errorf("kubelet PodResources lists %d device(s) that cannot be tied to a GPU: %w; changing nothing", len(devices), errors.Join(errs...))
}

// allocation reads kubelet's PodResources. A kubelet without it (never
// answered since the agent started, and no socket or no List) means NVML-only
// attribution, unless RequirePodResources refuses that; any other failure
// freezes the GPUs.
func (r *Runner) allocation(ctx context.Context) (allocated []podmap.PodDevices, nvmlOnly bool, err error) {
	allocated, err = r.PodResources.List(ctx)
	switch {
	case err == nil:
		r.allocated = true
	case !errors.Is(err, podmap.ErrPodResourcesUnavailable) || r.allocated:
		return nil, false, fmt.Errorf("kubelet PodResources: %w; changing nothing", err)
	case r.RequirePodResources:
		return nil, false, fmt.Errorf("kubelet PodResources: %w, and --require-pod-resources refuses attributing GPUs by their processes; changing nothing", err)
	default:
		nvmlOnly = true
	}
	if nvmlOnly != r.nvmlOnly {
		if nvmlOnly {
			r.Log.Info("Attributing GPUs by their processes alone: kubelet has no PodResources (set --require-pod-resources to refuse)", "err", err.Error())
		} else {
			r.Log.Info("Attributing GPUs by kubelet's allocation: PodResources answered")
		}
		r.nvmlOnly = nvmlOnly
	}
	return allocated, nvmlOnly, nil
}
