package podmap

import (
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// CachedPod is a pod of the caller's cache, as far as joining it to
// PodResources goes. The cache holds one pod per namespace/name at a time,
// as the API server does.
type CachedPod struct {
	Namespace, Name string
	UID             types.UID
	// Started is set once kubelet has started the pod (status.startTime):
	// kubelet allocates a pod's devices when it admits it, before it starts
	// it, so PodResources' entry for the name is then this pod's.
	Started bool
}

// Identities joins PodResources' namespace/name to pod UIDs, cycle after
// cycle. A name's entry goes to the cache's pod of that name, except when it
// cannot be told to be that pod's; it is then withheld, and the GPUs it
// names are left as they are:
//   - the name was re-created under a new UID: kubelet may still list the
//     predecessor's devices under the name, so the entry is withheld from the
//     new pod until kubelet shows it knows the new pod (it started it) or has
//     dropped the old one (a listing without the name);
//   - kubelet lists the name twice: its entries cannot be told apart;
//   - the devices listed under a started pod's name changed: a pod's
//     allocation never changes once kubelet started it, so the entry is
//     another pod's (the cache lags kubelet: the old pod's deletion is not
//     seen yet, and kubelet lists its successor under the name).
//
// It remembers the names of the cache and of kubelet's last listing, and
// each name's devices, no more. Its zero value is ready; it is not safe for
// concurrent use.
type Identities struct {
	last map[string]identity
}

type identity struct {
	uid types.UID
	// trusted: the name's entry may be attributed to uid.
	trusted bool
	// devices are those kubelet listed for uid; final once listed after
	// kubelet started the pod (before, kubelet may still be allocating).
	devices sets.Set[DeviceRef]
	final   bool
}

// Join is one cycle's join of cache (the non-terminal pods on the node) to
// listed (PodResources' answer). owners maps namespace/name to the UID its
// devices belong to; withheld maps the listed names whose entries cannot be
// attributed this cycle to their cached pod's UID: the GPUs they name are to
// be left as they are, and those pods' processes neither obeyed nor reported.
func (ids *Identities) Join(cache []CachedPod, listed []PodDevices) (owners, withheld map[string]types.UID) {
	times := make(map[string]int, len(listed))
	entry := make(map[string]PodDevices, len(listed))
	for _, p := range listed {
		name := p.Namespace + "/" + p.Name
		times[name]++
		entry[name] = p
	}
	next := make(map[string]identity, len(cache)+len(listed))
	owners = make(map[string]types.UID, len(listed))
	withheld = map[string]types.UID{}
	for _, p := range cache {
		name := p.Namespace + "/" + p.Name
		id, seen := ids.last[name]
		switch {
		case !seen:
			id = identity{uid: p.UID, trusted: true}
		case id.uid != p.UID:
			id = identity{uid: p.UID} // re-created: kubelet may list the predecessor
		}
		if !id.trusted && (p.Started || times[name] == 0) {
			id.trusted = true
		}
		switch {
		case times[name] == 0:
		case !id.trusted || times[name] > 1:
			withheld[name] = p.UID
		default:
			devices := sets.New(entry[name].Devices...)
			switch {
			case id.final && devices.Len() > 0 && !devices.Equal(id.devices):
				withheld[name] = p.UID // another pod's entry under the name
			default:
				if !id.final && devices.Len() > 0 {
					id.devices, id.final = devices, p.Started
				}
				owners[name] = p.UID
			}
		}
		next[name] = id
	}
	// A name kubelet still lists after its pod left the cache is kept, so
	// that a successor under the name is recognised as one.
	for name := range times {
		if _, cached := next[name]; !cached {
			if id, seen := ids.last[name]; seen {
				next[name] = id
			}
		}
	}
	ids.last = next
	return owners, withheld
}
