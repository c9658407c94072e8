package sandbox

import (
	"context"
	"slices"
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
	gpus []string
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
			cs = append(cs, podresourcestest.Container(c.name, podresourcestest.Devices(policy.ResourceGPU, c.gpus...)))
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
func (k *kubelet) allocate(p *corev1.Pod) (allocation, bool) {
	used := map[string]bool{}
	for _, a := range k.alloc {
		for _, c := range a.containers {
			for _, g := range c.gpus {
				used[g] = true
			}
		}
	}
	a := allocation{pod: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}}
	for _, c := range p.Spec.Containers {
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
		a.containers = append(a.containers, containerGPUs{name: c.Name, gpus: got})
	}
	return a, len(a.containers) > 0
}

// GPUsOf returns the indexes of the simulated GPUs allocated to a pod.
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
				out = append(out, slices.Index(k.gpus, g))
			}
		}
	}
	slices.Sort(out)
	return out
}
