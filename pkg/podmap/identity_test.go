package podmap_test

import (
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

func TestIdentitiesJoin(t *testing.T) {
	pod := func(uid types.UID, started bool) podmap.CachedPod {
		return podmap.CachedPod{Namespace: "ml", Name: "w-0", UID: uid, Started: started}
	}
	listed := []podmap.PodDevices{{Namespace: "ml", Name: "w-0"}}
	on := func(uuids ...string) []podmap.PodDevices {
		p := podmap.PodDevices{Namespace: "ml", Name: "w-0"}
		for _, u := range uuids {
			p.Devices = append(p.Devices, podmap.DeviceRef{Kind: podmap.KindGPU, UUID: u})
		}
		return []podmap.PodDevices{p}
	}
	twice := []podmap.PodDevices{{Namespace: "ml", Name: "w-0"}, {Namespace: "ml", Name: "w-0"}}
	// cycle is what the cache and kubelet show in one cycle, and what the
	// join must answer.
	type cycle struct {
		cache    []podmap.CachedPod
		listed   []podmap.PodDevices
		owner    types.UID // "" for none
		withheld []types.UID
	}
	tests := []struct {
		name   string
		cycles []cycle
	}{
		{"a pod seen for the first time owns its entry", []cycle{
			{[]podmap.CachedPod{pod(uidA, false)}, listed, uidA, nil},
		}},
		{"a pod kubelet does not list yet owns nothing, then its entry", []cycle{
			{[]podmap.CachedPod{pod(uidA, false)}, nil, "", nil},
			{[]podmap.CachedPod{pod(uidA, false)}, listed, uidA, nil},
		}},
		{"an entry without a pod in the cache goes to no one", []cycle{
			{nil, listed, "", nil},
		}},
		{"re-created under the name: the old entry is withheld until kubelet drops it", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, "", []types.UID{uidB}},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, "", []types.UID{uidB}},
			{[]podmap.CachedPod{pod(uidB, false)}, nil, "", nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, uidB, nil},
		}},
		{"re-created under the name: the entry is the new pod's once kubelet started it", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, "", []types.UID{uidB}},
			{[]podmap.CachedPod{pod(uidB, true)}, listed, uidB, nil},
		}},
		{"the old pod left the cache a cycle before the new one came: still withheld", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
			{nil, listed, "", nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, "", []types.UID{uidB}},
			{[]podmap.CachedPod{pod(uidB, true)}, listed, uidB, nil},
		}},
		{"the old pod and kubelet's entry both gone before the new pod: a fresh name", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
			{nil, nil, "", nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, uidB, nil},
		}},
		{"trust, once earned, stays with the UID", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
			{[]podmap.CachedPod{pod(uidB, true)}, listed, uidB, nil},
			{[]podmap.CachedPod{pod(uidB, false)}, listed, uidB, nil},
		}},
		{"a started pod's devices changed under its UID: another pod's entry, withheld", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuH100), uidA, nil},
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuFake), "", []types.UID{uidA}},
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuFake), "", []types.UID{uidA}},
			{[]podmap.CachedPod{pod(uidB, true)}, on(gpuFake), uidB, nil},
		}},
		{"the same devices cycle after cycle: still the pod's", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuH100, gpuFake), uidA, nil},
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuFake, gpuH100), uidA, nil},
		}},
		{"devices listed before kubelet started the pod may still grow", []cycle{
			{[]podmap.CachedPod{pod(uidA, false)}, on(gpuH100), uidA, nil},
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuH100, gpuFake), uidA, nil},
			{[]podmap.CachedPod{pod(uidA, true)}, on(gpuH100), "", []types.UID{uidA}},
		}},
		{"a name kubelet lists twice goes to no one", []cycle{
			{[]podmap.CachedPod{pod(uidA, true)}, twice, "", []types.UID{uidA}},
			{[]podmap.CachedPod{pod(uidA, true)}, listed, uidA, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ids podmap.Identities
			for i, c := range tt.cycles {
				owners, withheld := ids.Join(c.cache, c.listed)
				want := map[string]types.UID{}
				if c.owner != "" {
					want["ml/w-0"] = c.owner
				}
				if !reflect.DeepEqual(owners, want) {
					t.Errorf("cycle %d: owners %v; want %v", i, owners, want)
				}
				got := make([]types.UID, 0, len(withheld))
				for _, uid := range withheld {
					got = append(got, uid)
				}
				if !reflect.DeepEqual(got, c.withheld) && (len(got) > 0 || len(c.withheld) > 0) {
					t.Errorf("cycle %d: withheld %v; want %v", i, got, c.withheld)
				}
			}
		})
	}
}

// TestIdentitiesForgetNames: what it remembers is bounded by the cache and
// kubelet's listing, whatever the churn of names.
func TestIdentitiesForgetNames(t *testing.T) {
	var ids podmap.Identities
	for i := range 1000 {
		uid := types.UID(uidA[:35] + string(rune('0'+i%10)))
		name := string(rune('a'+i%26)) + string(rune('a'+i/26%26))
		ids.Join([]podmap.CachedPod{{Namespace: "ml", Name: name, UID: uid}}, nil)
	}
	owners, _ := ids.Join([]podmap.CachedPod{{Namespace: "ml", Name: "zz", UID: uidB}}, []podmap.PodDevices{{Namespace: "ml", Name: "zz"}})
	if owners["ml/zz"] != uidB {
		t.Errorf("a name whose pods came and went with kubelet's entries is not fresh: owners %v", owners)
	}
}
