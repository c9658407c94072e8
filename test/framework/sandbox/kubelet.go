package sandbox

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// kubelet plays the kubelet's device manager on the sandbox's node: each
// container of a pod bound to the node that asks for nvidia.com/gpu gets free
// simulated GPUs, lowest index first, and the PodResources API reports them;
// a pod that is deleted or finished gives its GPUs back, and a deleted pod is
// then removed, as the kubelet does once its containers stopped. A pod that
// asks for more than is free gets none, as kubelet admission would refuse it.
type kubelet struct {
	c      client.Client
	node   string
	gpus   []string // UUIDs, by index
	server *podresourcestest.Server

	mu    sync.Mutex
	alloc map[types.UID]allocation
}

type allocation struct {
	pod        types.NamespacedName
	containers []containerGPUs
}

type containerGPUs struct {
	name string
	// resource is the extended resource the devices are listed under.
	resource corev1.ResourceName
	gpus     []string // device IDs: UUIDs, or UUID::replica for a share
}

// sync allocates GPUs to new pods, frees those of pods that are gone, and
// publishes the result on the PodResources API.
func (k *kubelet) sync(ctx context.Context) error {
	var pods corev1.PodList
	if err := k.c.List(ctx, &pods, client.MatchingFields{"spec.nodeName": k.node}); err != nil {
		return err
	}
	k.mu.Lock()
	live := map[types.UID]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			live[p.UID] = true
		}
	}
	for uid := range k.alloc {
		if !live[uid] {
			delete(k.alloc, uid)
		}
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if _, done := k.alloc[p.UID]; done || !live[p.UID] {
			continue
		}
		if a, ok := k.allocate(p); ok {
			k.alloc[p.UID] = a
		}
	}
	var out []*podresourcesv1.PodResources
	for _, a := range k.alloc {
		var cs []*podresourcesv1.ContainerResources
		for _, c := range a.containers {
			cs = append(cs, podresourcestest.Container(c.name, podresourcestest.Devices(string(c.resource), c.gpus...)))
		}
		out = append(out, podresourcestest.Pod(a.pod.Namespace, a.pod.Name, cs...))
	}
	k.server.SetPods(out...)
	k.mu.Unlock()
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp != nil {
			if err := k.c.Delete(ctx, p, client.GracePeriodSeconds(0)); client.IgnoreNotFound(err) != nil {
				return err
			}
		}
	}
	return nil
}

// allocate picks free GPUs for each container of p that asks for some.
// nvidia.com/gpu.shared is served as the device plugin's time-slicing does:
// replicas ("UUID::n") of one board, the last GPU, which no pod then gets
// whole.
func (k *kubelet) allocate(p *corev1.Pod) (allocation, bool) {
	used := map[string]bool{}
	replicas := 0
	for _, a := range k.alloc {
		for _, c := range a.containers {
			for _, g := range c.gpus {
				board, _, shared := strings.Cut(g, "::")
				used[board] = true
				if shared {
					replicas++
				}
			}
		}
	}
	shared := k.gpus[len(k.gpus)-1]
	a := allocation{pod: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}}
	for _, c := range p.Spec.Containers {
		if n := c.Resources.Limits.Name(policy.ResourceGPUShared, "").Value(); n > 0 {
			if used[shared] && replicas == 0 {
				return allocation{}, false // the board is some pod's whole GPU
			}
			var ids []string
			for range n {
				ids = append(ids, fmt.Sprintf("%s::%d", shared, replicas))
				replicas++
			}
			used[shared] = true
			a.containers = append(a.containers, containerGPUs{name: c.Name, resource: policy.ResourceGPUShared, gpus: ids})
			continue
		}
		n := c.Resources.Limits.Name(policy.ResourceGPU, "").Value()
		if n == 0 {
			continue
		}
		var got []string
		for _, g := range k.gpus {
			if int64(len(got)) == n {
				break
			}
			if !used[g] {
				used[g] = true
				got = append(got, g)
			}
		}
		if int64(len(got)) < n {
			return allocation{}, false
		}
		a.containers = append(a.containers, containerGPUs{name: c.Name, resource: policy.ResourceGPU, gpus: got})
	}
	return a, len(a.containers) > 0
}

// GPUsOf returns the indexes of the simulated GPUs allocated to a pod (a
// share of a board counts as that board).
func (k *kubelet) GPUsOf(pod types.NamespacedName) []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []int
	for _, a := range k.alloc {
		if a.pod != pod {
			continue
		}
		for _, c := range a.containers {
			for _, g := range c.gpus {
				board, _, _ := strings.Cut(g, "::")
				out = append(out, slices.Index(k.gpus, board))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
