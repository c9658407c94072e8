package podmap

import (
	"errors"
	"fmt"
	"io/fs"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// Holders maps a GPU UUID ("GPU-…") to the UIDs of the pods holding it. A GPU
// that no pod holds has no entry.
type Holders map[string]sets.Set[types.UID]

func (h Holders) add(gpu string, uid types.UID) {
	if h[gpu] == nil {
		h[gpu] = sets.New[types.UID]()
	}
	h[gpu].Insert(uid)
}

// Process is a process NVML reports running on a GPU (compute, graphics or
// MPS).
type Process struct {
	// GPU is the UUID of the GPU, of the parent GPU for a process on a MIG
	// device.
	GPU string
	PID int
}

// Sources is everything Build unites; Build reads nothing else.
type Sources struct {
	// Pods is PodResourcesClient.List's answer.
	Pods []PodDevices
	// UIDOf looks a pod up in the caller's pod cache. False drops the pod's
	// devices: it left the node, or reached a terminal phase and its devices
	// are free even though kubelet still lists them. Required with Pods.
	UIDOf func(namespace, name string) (types.UID, bool)
	// Resolver resolves MIG and index device IDs to GPU UUIDs.
	Resolver Resolver
	// Processes are NVML's running processes on this node's GPUs.
	Processes []Process
	// Proc is the host's /proc, for the processes' cgroups. Required with
	// Processes.
	Proc fs.FS
	// Cache, when set, carries the pods of the last call's processes over to
	// the next call.
	Cache *PIDCache
}

// PIDCache remembers which pod each GPU process was in, from one Build to
// the next. A PID NVML lists in two consecutive cycles is taken to be the same
// process, so its cgroup is not read again; a PID missing from a cycle is
// forgotten, so a reused PID is read afresh. It keeps a steady-state cycle
// from reading /proc at all.
type PIDCache struct {
	last map[int]pidPod
}

type pidPod struct {
	uid types.UID
	ok  bool
}

// Build returns which pods hold which GPU: every device PodResources lists
// for a pod the cache knows, plus the pod of every NVML process that runs in
// one. It never fails as a whole: what it had to skip (a device it could not
// resolve, a process whose cgroup it could not read) is in skipped, one error
// each, and the rest is in the map. A PID that is out of range or whose
// process has exited is skipped silently: NVML's list is stale by the time it
// arrives. Pods found through a process are not looked up in the cache: the
// caller looks every holder up anyway, for its limit and phase.
func Build(src Sources) (holders Holders, skipped []error) {
	holders = Holders{}
	for _, p := range src.Pods {
		uid, ok := src.UIDOf(p.Namespace, p.Name)
		if !ok {
			continue
		}
		for _, ref := range p.Devices {
			gpu, err := src.Resolver.GPU(ref)
			if err != nil {
				skipped = append(skipped, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err))
				continue
			}
			holders.add(gpu, uid)
		}
	}

	// One process often runs on several GPUs; its cgroup is read once.
	podOf := make(map[int]pidPod, len(src.Processes))
	var unreadable []int
	for _, proc := range src.Processes {
		if proc.PID <= 0 || proc.PID > maxPID {
			continue
		}
		p, seen := podOf[proc.PID]
		if !seen && src.Cache != nil {
			p, seen = src.Cache.last[proc.PID]
			if seen {
				podOf[proc.PID] = p
			}
		}
		if !seen {
			uid, ok, err := PodOfPID(src.Proc, proc.PID)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				skipped = append(skipped, fmt.Errorf("process on %s: %w", proc.GPU, err))
			}
			p = pidPod{uid, ok}
			podOf[proc.PID] = p
			if err != nil {
				unreadable = append(unreadable, proc.PID)
			}
		}
		if p.ok {
			holders.add(proc.GPU, p.uid)
		}
	}
	if src.Cache != nil {
		for _, pid := range unreadable {
			delete(podOf, pid) // read again next cycle
		}
		src.Cache.last = podOf
	}
	return holders, skipped
}
