package podmap_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

func TestBuild(t *testing.T) {
	// Owners from the pod cache: every pod but "finished", which reached a
	// terminal phase; "recreated" is withheld (Identities).
	owners := map[string]types.UID{"ml/a": uidA, "ml/b": uidB, "ml/c": uidC}
	withheld := map[string]types.UID{"ml/recreated": uidE}
	resolver := podmap.Resolver{
		MIGParent: func(mig string) (string, error) {
			if mig == migH100 {
				return gpuH100, nil
			}
			return "", errors.New("not found")
		},
		GPUByIndex: func(i int) (string, error) {
			if i == 0 {
				return gpuH100, nil
			}
			return "", errors.New("not found")
		},
	}
	proc := fstest.MapFS{
		"100/cgroup": {Data: []byte("0::/kubepods/burstable/pod" + uidD + "/" + cid + "\n")},
		"101/cgroup": {Data: []byte("0::/kubepods.slice/kubepods-pod" + underscored(uidA) + ".slice/cri-containerd-" + cid + ".scope\n")},
		"102/cgroup": {Data: []byte("0::/kubepods/pod" + uidE + "/" + cid + "\n")},
		"440/cgroup": {Data: []byte("0::/process_api/578764acb041b820a72f833fcd87f644\n")},
		"666/cgroup": {Data: []byte(strings.Repeat("x", 1<<17))},
	}
	gpu := func(uuid string) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: uuid} }
	replica := func(uuid string) podmap.DeviceRef {
		return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: uuid, Part: true}
	}
	pod := func(name string, refs ...podmap.DeviceRef) podmap.PodDevices {
		return podmap.PodDevices{Namespace: "ml", Name: name, Devices: refs}
	}
	stray := func(gpu string, pid int, uid types.UID) podmap.Stray {
		return podmap.Stray{GPU: gpu, PID: pid, Pod: uid}
	}

	tests := []struct {
		name      string
		pods      []podmap.PodDevices
		processes []podmap.Process
		nvmlOnly  bool
		want      map[string][]types.UID
		strays    []podmap.Stray
		skipped   []string
	}{
		{"nothing holds a GPU", nil, nil, false, map[string][]types.UID{}, nil, nil},
		{"PodResources alone",
			[]podmap.PodDevices{pod("a", gpu(gpuH100)), pod("b", gpu(gpuFake))}, nil, false,
			map[string][]types.UID{gpuH100: {uidA}, gpuFake: {uidB}}, nil, nil},
		{"time-sliced GPU: every pod sharing it holds it",
			[]podmap.PodDevices{pod("a", replica(gpuH100)), pod("b", replica(gpuH100))}, nil, false,
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil, nil},
		{"MIG device and index ID count for their GPU",
			[]podmap.PodDevices{pod("a", podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100, Part: true}), pod("b", podmap.DeviceRef{Kind: podmap.KindIndex, Part: true})}, nil, false,
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil, nil},
		{"pod without an owner (gone, finished, re-created) holds nothing",
			[]podmap.PodDevices{pod("finished", gpu(gpuH100)), pod("c", gpu(gpuFake))}, nil, false,
			map[string][]types.UID{gpuFake: {uidC}}, nil, nil},

		// Allocation is the truth.
		{"process of a pod allocated no GPU is a stray and holds nothing",
			[]podmap.PodDevices{pod("b", gpu(gpuFake))}, []podmap.Process{{GPU: gpuH100, PID: 100}}, false,
			map[string][]types.UID{gpuFake: {uidB}}, []podmap.Stray{stray(gpuH100, 100, uidD)}, nil},
		{"process of a pod on another tenant's GPU is a stray and adds nothing",
			[]podmap.PodDevices{pod("a", gpu(gpuFake)), pod("b", gpu(gpuH100))}, []podmap.Process{{GPU: gpuH100, PID: 101}}, false,
			map[string][]types.UID{gpuH100: {uidB}, gpuFake: {uidA}}, []podmap.Stray{stray(gpuH100, 101, uidA)}, nil},
		{"process of a pod on its own GPU is neither added nor reported",
			[]podmap.PodDevices{pod("a", gpu(gpuH100))}, []podmap.Process{{GPU: gpuH100, PID: 101}}, false,
			map[string][]types.UID{gpuH100: {uidA}}, nil, nil},
		{"process on the GPU of its pod's MIG device is its own",
			[]podmap.PodDevices{pod("a", podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100})}, []podmap.Process{{GPU: gpuH100, PID: 101}}, false,
			map[string][]types.UID{gpuH100: {uidA}}, nil, nil},
		{"a process listed twice (compute and graphics) is one stray",
			nil, []podmap.Process{{GPU: gpuH100, PID: 100}, {GPU: gpuH100, PID: 100}, {GPU: gpuFake, PID: 100}}, false,
			map[string][]types.UID{}, []podmap.Stray{stray(gpuH100, 100, uidD), stray(gpuFake, 100, uidD)}, nil},
		{"process of a withheld pod is not reported",
			nil, []podmap.Process{{GPU: gpuH100, PID: 102}}, false,
			map[string][]types.UID{}, nil, nil},

		// The fallback for a kubelet without PodResources.
		{"NVML only: a process adds its pod",
			nil, []podmap.Process{{GPU: gpuH100, PID: 100}}, true,
			map[string][]types.UID{gpuH100: {uidD}}, nil, nil},
		{"NVML only: one process on two GPUs",
			nil, []podmap.Process{{GPU: gpuH100, PID: 100}, {GPU: gpuFake, PID: 100}}, true,
			map[string][]types.UID{gpuH100: {uidD}, gpuFake: {uidD}}, nil, nil},

		{"process outside any pod maps to nothing",
			nil, []podmap.Process{{GPU: gpuH100, PID: 440}}, true,
			map[string][]types.UID{}, nil, nil},
		{"process that exited after NVML listed it is skipped silently",
			nil, []podmap.Process{{GPU: gpuH100, PID: 9999}, {GPU: gpuH100, PID: 100}}, true,
			map[string][]types.UID{gpuH100: {uidD}}, nil, nil},
		{"PIDs 0, negative and beyond pid_max are skipped silently",
			nil, []podmap.Process{{GPU: gpuH100, PID: 0}, {GPU: gpuH100, PID: -5}, {GPU: gpuH100, PID: 1 << 40}}, false,
			map[string][]types.UID{}, nil, nil},
		{"unreadable cgroup is skipped and said",
			nil, []podmap.Process{{GPU: gpuH100, PID: 666}, {GPU: gpuFake, PID: 666}, {GPU: gpuFake, PID: 101}}, true,
			map[string][]types.UID{gpuFake: {uidA}}, nil, []string{"process on " + gpuH100 + ": cgroup of pid 666: longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := podmap.Build(podmap.Sources{
				Pods:      tt.pods,
				Owners:    owners,
				Withheld:  withheld,
				NVMLOnly:  tt.nvmlOnly,
				Resolver:  resolver,
				Processes: tt.processes,
				Proc:      proc,
			})
			got := map[string][]types.UID{}
			for gpu, pods := range res.Holders {
				got[gpu] = sets.List(pods)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Holders = %v; want %v", got, tt.want)
			}
			if !reflect.DeepEqual(res.Strays, tt.strays) {
				t.Errorf("Strays = %v; want %v", res.Strays, tt.strays)
			}
			if len(res.Frozen) > 0 || len(res.Unattributable) > 0 {
				t.Errorf("Frozen %v, Unattributable %v; want none", res.Frozen, res.Unattributable)
			}
			if len(res.Skipped) != len(tt.skipped) {
				t.Fatalf("Skipped %v; want %q", res.Skipped, tt.skipped)
			}
			for i, err := range res.Skipped {
				if !strings.Contains(err.Error(), tt.skipped[i]) {
					t.Errorf("Skipped[%d] = %v; want one containing %q", i, err, tt.skipped[i])
				}
			}
		})
	}
}

// TestBuildHoldsWhatItCannotAttribute: what Build cannot tie to one pod's
// allocation is never dropped, so it never gives a GPU back under its pod.
func TestBuildHoldsWhatItCannotAttribute(t *testing.T) {
	owners := map[string]types.UID{"ml/a": uidA, "ml/b": uidB}
	withheld := map[string]types.UID{"ml/recreated": uidE}
	resolver := podmap.Resolver{
		MIGParent:  func(string) (string, error) { return "", errors.New("NVML: unknown error") },
		GPUByIndex: func(int) (string, error) { return "", errors.New("not found") },
	}
	gpu := func(uuid string) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: uuid} }
	tests := []struct {
		name           string
		pods           []podmap.PodDevices
		holders        map[string][]types.UID
		frozen         []string
		unattributable []string
	}{
		{"a device ID that did not parse could be any GPU",
			[]podmap.PodDevices{{Namespace: "ml", Name: "a", Invalid: []error{errors.New(`device "GPU-F4CE" of nvidia.com/gpu: not lowercase`)}}},
			map[string][]types.UID{}, nil, []string{`device "GPU-F4CE"`}},
		{"a MIG device whose board NVML cannot tell could be any GPU",
			[]podmap.PodDevices{{Namespace: "ml", Name: "a", Devices: []podmap.DeviceRef{{Kind: podmap.KindMIG, UUID: migH100, Part: true}, gpu(gpuFake)}}},
			map[string][]types.UID{gpuFake: {uidA}}, nil, []string{"pod ml/a: resolve device " + migH100 + ": NVML: unknown error"}},
		{"an index no GPU has could be any GPU",
			[]podmap.PodDevices{{Namespace: "ml", Name: "b", Devices: []podmap.DeviceRef{{Kind: podmap.KindIndex, Index: 7}}}},
			map[string][]types.UID{}, nil, []string{"pod ml/b: resolve device 7: not found"}},
		{"an unparsable ID of a pod not in the cache holds nothing, as its devices",
			[]podmap.PodDevices{{Namespace: "ml", Name: "gone", Invalid: []error{errors.New("bad")}}},
			map[string][]types.UID{}, nil, nil},
		{"a withheld entry's GPUs are frozen, held by no one",
			[]podmap.PodDevices{{Namespace: "ml", Name: "recreated", Devices: []podmap.DeviceRef{gpu(gpuH100)}}},
			map[string][]types.UID{}, []string{gpuH100}, nil},
		{"a whole GPU listed for two pods is frozen",
			[]podmap.PodDevices{{Namespace: "ml", Name: "a", Devices: []podmap.DeviceRef{gpu(gpuH100)}},
				{Namespace: "ml", Name: "b", Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}}}},
			map[string][]types.UID{gpuH100: {uidA, uidB}}, []string{gpuH100}, nil},
		{"replicas of one GPU for two pods: shared, not frozen",
			[]podmap.PodDevices{{Namespace: "ml", Name: "a", Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}}},
				{Namespace: "ml", Name: "b", Devices: []podmap.DeviceRef{{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}}}},
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := podmap.Build(podmap.Sources{Pods: tt.pods, Owners: owners, Withheld: withheld, Resolver: resolver})
			got := map[string][]types.UID{}
			for gpu, pods := range res.Holders {
				got[gpu] = sets.List(pods)
			}
			if !reflect.DeepEqual(got, tt.holders) {
				t.Errorf("Holders = %v; want %v", got, tt.holders)
			}
			var frozen []string
			for gpu := range res.Frozen {
				frozen = append(frozen, gpu)
			}
			if !reflect.DeepEqual(frozen, tt.frozen) {
				t.Errorf("Frozen = %v; want %v", res.Frozen, tt.frozen)
			}
			if len(res.Unattributable) != len(tt.unattributable) {
				t.Fatalf("Unattributable = %v; want %q", res.Unattributable, tt.unattributable)
			}
			for i, u := range res.Unattributable {
				if !strings.Contains(u.Err.Error(), tt.unattributable[i]) || u.Pod == "" {
					t.Errorf("Unattributable[%d] = %+v; want one of a cached pod containing %q", i, u, tt.unattributable[i])
				}
			}
		})
	}
}

func TestBuildPIDCache(t *testing.T) {
	const uid = "d8259892-8372-41e6-a3ca-595e7e9a7d82"
	proc := fstest.MapFS{"42/cgroup": &fstest.MapFile{Data: []byte("0::/kubepods/besteffort/pod" + uid + "/abc\n")}}
	cache := &podmap.PIDCache{}
	src := podmap.Sources{NVMLOnly: true, Processes: []podmap.Process{{GPU: "GPU-a", PID: 42}}, Proc: proc, Cache: cache}
	if h := podmap.Build(src).Holders; !h["GPU-a"].Has(uid) {
		t.Fatalf("first cycle: %v", h)
	}
	// The same PID in the next cycle is not read again.
	delete(proc, "42/cgroup")
	if h := podmap.Build(src).Holders; !h["GPU-a"].Has(uid) {
		t.Fatalf("second cycle did not use the cache: %v", h)
	}
	// A cycle without the PID forgets it; a reused PID is read afresh.
	src.Processes = nil
	podmap.Build(src)
	src.Processes = []podmap.Process{{GPU: "GPU-a", PID: 42}}
	if h := podmap.Build(src).Holders; h["GPU-a"].Len() != 0 {
		t.Fatalf("a PID that left and came back was not read again: %v", h)
	}
}
