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
// cycle. A name's entry goes to the cache's pod of that name, except when
// the name was re-created under a new UID: kubelet may still list the
// predecessor's devices under the name, so the entry is withheld from the
// new pod until kubelet shows it knows the new pod (it started it) or has
// dropped the old one (a listing without the name). A name kubelet lists
// twice is withheld from everyone: its entries cannot be told apart.
//
// It remembers the names of the cache and of kubelet's last listing, no
// more. Its zero value is ready; it is not safe for concurrent use.
type Identities struct {
	last map[string]identity
}

type identity struct {
	uid types.UID
	// trusted: the name's entry may be attributed to uid.
	trusted bool
}

// Join is one cycle's join of cache (the non-terminal pods on the node) to
// listed (PodResources' answer). owners maps namespace/name to the UID its
// devices belong to; withheld are the cached pods whose allocation is unknown
// this cycle, whose processes are therefore neither obeyed nor reported.
func (ids *Identities) Join(cache []CachedPod, listed []PodDevices) (owners map[string]types.UID, withheld sets.Set[types.UID]) {
	times := make(map[string]int, len(listed))
	for _, p := range listed {
		times[p.Namespace+"/"+p.Name]++
	}
	next := make(map[string]identity, len(cache)+len(listed))
	owners = make(map[string]types.UID, len(listed))
	withheld = sets.New[types.UID]()
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
		next[name] = id
		switch {
		case times[name] == 0:
		case id.trusted && times[name] == 1:
			owners[name] = p.UID
		default:
			withheld.Insert(p.UID)
		}
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
