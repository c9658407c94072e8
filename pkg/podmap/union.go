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
	// Owners maps a listed namespace/name to the UID of the pod its devices
	// belong to (Identities.Join). A name without an owner holds nothing: it
	// left the node, or reached a terminal phase (its devices are free though
	// kubelet still lists them).
	Owners map[string]types.UID
	// Withheld maps a listed namespace/name whose entry cannot be told to be
	// its cached pod's this cycle to that pod's UID (Identities.Join): the
	// GPUs the entry names are Frozen, and the pod's processes are neither
	// obeyed nor reported.
	Withheld map[string]types.UID
	// NVMLOnly is the fallback for a kubelet without PodResources: a process
	// then adds its pod to the GPU it runs on. Otherwise allocation is the
	// truth, and a process on a GPU its pod was not allocated is a Stray.
	NVMLOnly bool
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

// Stray is a process of a pod running on a GPU that kubelet did not
// allocate to the pod (it asked for no GPU and sees them all, say): it never
// sets the GPU's cap, and the caller reports it.
type Stray struct {
	GPU string
	PID int
	Pod types.UID
}

// Result is what Build found.
type Result struct {
	Holders Holders
	// Strays are processes on GPUs their pods were not allocated, in NVML's
	// order; always empty with NVMLOnly.
	Strays []Stray
	// Skipped has one error for each process Build had to skip.
	Skipped []error
	// Frozen maps a GPU whose holders are unknown this cycle to why: a
	// withheld entry names it, or kubelet lists a whole GPU for two pods,
	// which a correct kubelet never does. The caller changes nothing on it.
	Frozen map[string]error
	// Unattributable has one entry for each device of a cached pod that Build
	// could not tie to a GPU (an ID that did not parse, a lookup that
	// failed). It could be any GPU, so the caller changes no GPU at all.
	Unattributable []Unattributed
}

// Unattributed is a device kubelet lists for a pod that Build could not tie
// to a GPU.
type Unattributed struct {
	// Pod is the UID of the cached pod the entry is for (its owner, or the
	// pod it is withheld from).
	Pod types.UID
	Err error
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
// for a pod with an owner, and, with NVMLOnly alone, the pod of every NVML
// process that runs in one. It never fails as a whole: what it cannot
// attribute is in Frozen (GPUs to leave as they are) and Unattributable
// (devices that could be any GPU), what it had to skip (a process whose
// cgroup it could not read) is in Skipped, and the rest is in Holders. A PID
// that is out of range or whose process has exited is skipped silently:
// NVML's list is stale by the time it arrives. Pods found through a process
// are not looked up in the cache: the caller looks every holder up anyway,
// for its limit and phase.
func Build(src Sources) Result {
	res := Result{Holders: Holders{}, Frozen: map[string]error{}}
	withheld := sets.New[types.UID]()
	for _, uid := range src.Withheld {
		withheld.Insert(uid)
	}
	whole := map[string]sets.Set[types.UID]{} // GPUs listed as a whole device, by holder
	for _, p := range src.Pods {
		name := p.Namespace + "/" + p.Name
		uid, owned := src.Owners[name]
		held, isWithheld := src.Withheld[name]
		if !owned && !isWithheld {
			continue
		}
		if isWithheld {
			uid = held
		}
		for _, err := range p.Invalid {
			res.Unattributable = append(res.Unattributable, Unattributed{Pod: uid, Err: err})
		}
		for _, ref := range p.Devices {
			gpu, err := src.Resolver.GPU(ref)
			switch {
			case errors.Is(err, ErrNotCapped):
				// Not a GPU a pod's limit may cap through this device.
			case err != nil:
				res.Unattributable = append(res.Unattributable, Unattributed{Pod: uid, Err: fmt.Errorf("pod %s: %w", name, err)})
			case isWithheld:
				if res.Frozen[gpu] == nil {
					res.Frozen[gpu] = fmt.Errorf("kubelet lists GPU %s for pod %s, whose entry cannot be told to be pod UID %s's this cycle", gpu, name, held)
				}
			default:
				res.Holders.add(gpu, uid)
				if !ref.Part && ref.Kind != KindMIG {
					if whole[gpu] == nil {
						whole[gpu] = sets.New[types.UID]()
					}
					whole[gpu].Insert(uid)
				}
			}
		}
	}
	for gpu := range whole {
		if n := res.Holders[gpu].Len(); n > 1 && res.Frozen[gpu] == nil {
			res.Frozen[gpu] = fmt.Errorf("kubelet lists GPU %s, allocated whole, for %d pods; a GPU allocated whole is one pod's", gpu, n)
		}
	}

	// One process often runs on several GPUs; its cgroup is read once.
	podOf := make(map[int]pidPod, len(src.Processes))
	var unreadable []int
	strays := sets.New[Stray]() // a process both compute and graphics is listed twice
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
				res.Skipped = append(res.Skipped, fmt.Errorf("process on %s: %w", proc.GPU, err))
			}
			p = pidPod{uid, ok}
			podOf[proc.PID] = p
			if err != nil {
				unreadable = append(unreadable, proc.PID)
			}
		}
		switch {
		case !p.ok:
		case src.NVMLOnly:
			res.Holders.add(proc.GPU, p.uid)
		case res.Frozen[proc.GPU] != nil: // its holders are unknown: neither obeyed nor reported
		case !res.Holders[proc.GPU].Has(p.uid) && !withheld.Has(p.uid):
			if s := (Stray{GPU: proc.GPU, PID: proc.PID, Pod: p.uid}); !strays.Has(s) {
				strays.Insert(s)
				res.Strays = append(res.Strays, s)
			}
		}
	}
	if src.Cache != nil {
		for _, pid := range unreadable {
			delete(podOf, pid) // read again next cycle
		}
		src.Cache.last = podOf
	}
	return res
}
