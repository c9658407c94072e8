package podindex

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Pod is what the index keeps of a pod.
type Pod struct {
	UID types.UID
	// GPU is set for a pod that requests GPUs; nil for every other pod.
	GPU *GPUPod
}

// GPUPod is what of a GPU pod a budget's arithmetic reads.
type GPUPod struct {
	policy.Chargeable
	// Finished is set once the pod Succeeded or Failed: it charges nothing.
	Finished bool
}

// Index is a reflector store of every pod: Add, Update, Delete and Replace
// take *corev1.Pod (or what the Transformer made of one) and keep a Pod of
// each, by namespace and name. It is safe for concurrent use.
type Index struct {
	// Validated, when set (before the index is fed), reports whether a GPU
	// pod's limit is the webhook's (policy.StampKey.Validated): a pod whose
	// limit is not is charged as a pod without one, the most its GPUs can
	// draw, since the agent does not cap it. Nil: every valid limit counts.
	Validated func(*corev1.Pod) bool
	// ClaimsSigned, when set, reports whether a pod's claims' GPU counts are
	// the webhook's (policy.StampKey.ClaimsSigned): a pod whose counts it
	// did not sign is charged them as a pod without a limit. Nil: every
	// count counts as written.
	ClaimsSigned func(*corev1.Pod) bool

	mu       sync.RWMutex
	pods     map[string]map[string]Pod // namespace -> name -> pod
	synced   atomic.Bool
	onChange []func()
}

var (
	_ toolscache.ReflectorStore    = (*Index)(nil)
	_ toolscache.TransformingStore = (*Index)(nil)
)

// New returns an empty index that has not synced.
func New() *Index {
	return &Index{pods: map[string]map[string]Pod{}}
}

// OnChange registers fn, called after a change that can move a budget: a
// GPU pod stored, deleted, finished or changed in what its cost depends on,
// and after every Replace. Changes of other pods, and of what the index does
// not keep (status conditions, labels), call nothing. fn runs on the
// reflector's goroutine and must not block.
func (ix *Index) OnChange(fn func()) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.onChange = append(ix.onChange, fn)
}

// HasSynced reports whether the first full list has been stored.
func (ix *Index) HasSynced() bool { return ix.synced.Load() }

// Get returns the pod namespace/name as last seen.
func (ix *Index) Get(namespace, name string) (Pod, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	p, ok := ix.pods[namespace][name]
	return p, ok
}

// EachGPUPod calls fn for every GPU pod of namespace, in no order. fn must
// not call the index.
func (ix *Index) EachGPUPod(namespace string, fn func(uid types.UID, p *GPUPod)) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, p := range ix.pods[namespace] {
		if p.GPU != nil {
			fn(p.UID, p.GPU)
		}
	}
}

// entry is a pod as the transformer leaves it: its key and its Pod. It is
// what the reflector's own temporary store holds while an initial list
// streams in, so it answers meta.Accessor for the key.
type entry struct {
	namespace, name string
	Pod
}

// GetObjectMeta lets client-go's key functions read the entry's key.
func (e *entry) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Namespace: e.namespace, Name: e.name}
}

// Transformer implements toolscache.TransformingStore: the reflector keeps
// entries, not pods, while a list streams in.
func (ix *Index) Transformer() toolscache.TransformFunc {
	return func(obj any) (any, error) { return ix.entryOf(obj) }
}

func (ix *Index) entryOf(obj any) (*entry, error) {
	switch o := obj.(type) {
	case *entry:
		return o, nil
	case *corev1.Pod:
		e := &entry{namespace: o.Namespace, name: o.Name, Pod: Pod{UID: o.UID}}
		c := policy.ChargeableOf(o)
		// A limit, or claims' counts, nobody signed: charged as a pod
		// without a limit, the most its GPUs can draw.
		unsigned := c.Claims != nil && ix.ClaimsSigned != nil && !ix.ClaimsSigned(o)
		if c.Limit > 0 && (unsigned || ix.Validated != nil && !ix.Validated(o)) {
			c.Limit = 0
			if c.Claims == nil {
				p := policy.PlacementOf(&o.Spec)
				c.Placement = &p
			}
		}
		if c.Charged() {
			e.GPU = &GPUPod{Chargeable: c, Finished: o.Status.Phase == corev1.PodSucceeded || o.Status.Phase == corev1.PodFailed}
		}
		return e, nil
	case toolscache.DeletedFinalStateUnknown:
		return ix.entryOf(o.Obj)
	}
	return nil, fmt.Errorf("pod index: cannot store %T", obj)
}

// Add implements toolscache.ReflectorStore.
func (ix *Index) Add(obj any) error { return ix.Update(obj) }

// Update implements toolscache.ReflectorStore.
func (ix *Index) Update(obj any) error {
	e, err := ix.entryOf(obj)
	if err != nil {
		return err
	}
	ix.mu.Lock()
	byName := ix.pods[e.namespace]
	if byName == nil {
		byName = map[string]Pod{}
		ix.pods[e.namespace] = byName
	}
	old, existed := byName[e.name]
	byName[e.name] = e.Pod
	moved := movesBudgets(old, existed, e.Pod)
	listeners := ix.onChange
	ix.mu.Unlock()
	if moved {
		notify(listeners)
	}
	return nil
}

// Delete implements toolscache.ReflectorStore.
func (ix *Index) Delete(obj any) error {
	e, err := ix.entryOf(obj)
	if err != nil {
		return err
	}
	ix.mu.Lock()
	byName := ix.pods[e.namespace]
	old, existed := byName[e.name]
	if existed {
		delete(byName, e.name)
		if len(byName) == 0 {
			delete(ix.pods, e.namespace)
		}
	}
	listeners := ix.onChange
	ix.mu.Unlock()
	if existed && old.GPU != nil {
		notify(listeners)
	}
	return nil
}

// Replace implements toolscache.ReflectorStore: list is the whole set of pods
// at resourceVersion.
func (ix *Index) Replace(list []any, _ string) error {
	pods := map[string]map[string]Pod{}
	for _, obj := range list {
		e, err := ix.entryOf(obj)
		if err != nil {
			return err
		}
		byName := pods[e.namespace]
		if byName == nil {
			byName = map[string]Pod{}
			pods[e.namespace] = byName
		}
		byName[e.name] = e.Pod
	}
	ix.mu.Lock()
	ix.pods = pods
	listeners := ix.onChange
	ix.mu.Unlock()
	ix.synced.Store(true)
	notify(listeners)
	return nil
}

// Resync implements toolscache.ReflectorStore; there is nothing to resend.
func (ix *Index) Resync() error { return nil }

// movesBudgets reports whether a pod's change can change what a budget
// charges: a GPU pod that appears, goes, or differs in cost or phase.
func movesBudgets(old Pod, existed bool, now Pod) bool {
	switch {
	case old.GPU == nil && now.GPU == nil:
		return false
	case !existed || old.GPU == nil || now.GPU == nil || old.UID != now.UID:
		return true
	}
	return !sameGPUPod(old.GPU, now.GPU)
}

func sameGPUPod(a, b *GPUPod) bool {
	if a.GPUs != b.GPUs || a.Limit != b.Limit || a.Finished != b.Finished || (a.Placement == nil) != (b.Placement == nil) || (a.Claims == nil) != (b.Claims == nil) {
		return false
	}
	if a.Claims != nil && (a.Claims.Own != b.Claims.Own || !slices.Equal(a.Claims.Shared, b.Claims.Shared)) {
		return false
	}
	if a.Placement == nil {
		return true
	}
	pa, pb := a.Placement, b.Placement
	return pa.Node == pb.Node && pa.PinnedBy == pb.PinnedBy && slices.Equal(pa.Pinned, pb.Pinned)
}

func notify(listeners []func()) {
	for _, fn := range listeners {
		fn()
	}
}

// Feed keeps an Index current from the API server: a reflector that streams
// the initial list (each pod reduced to its entry as it arrives, so the
// whole list is never held as pods) and then watches. It is a
// manager.Runnable that runs on every replica.
type Feed struct {
	Index     *Index
	reflector *toolscache.Reflector
}

// NewFeed returns a feed of ix from c's pods in every namespace.
func NewFeed(ix *Index, c kubernetes.Interface) *Feed {
	pods := c.CoreV1().Pods(metav1.NamespaceAll)
	lw := &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return pods.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, o)
		},
	}
	logger := klog.Background().WithName("pod-index")
	r := toolscache.NewReflectorWithOptions(lw, &corev1.Pod{}, ix, toolscache.ReflectorOptions{Name: "pod-index", Logger: &logger})
	return &Feed{Index: ix, reflector: r}
}

// Start runs the reflector until ctx ends.
func (f *Feed) Start(ctx context.Context) error {
	f.reflector.RunWithContext(ctx)
	return nil
}

// NeedLeaderElection is false: every replica admits, so every replica needs
// the index.
func (f *Feed) NeedLeaderElection() bool { return false }

// ResourceVersion is the resourceVersion the index has caught up to: every
// pod change up to it is stored.
func (f *Feed) ResourceVersion() string { return f.reflector.LastSyncResourceVersion() }
