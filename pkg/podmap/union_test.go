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
	// The pod cache: every pod but "finished", which reached a terminal phase.
	uids := map[string]types.UID{"ml/a": uidA, "ml/b": uidB, "ml/c": uidC}
	uidOf := func(namespace, name string) (types.UID, bool) {
		uid, ok := uids[namespace+"/"+name]
		return uid, ok
	}
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
		"440/cgroup": {Data: []byte("0::/process_api/578764acb041b820a72f833fcd87f644\n")},
		"666/cgroup": {Data: []byte(strings.Repeat("x", 1<<17))},
	}
	gpu := func(uuid string) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: uuid} }
	pod := func(name string, refs ...podmap.DeviceRef) podmap.PodDevices {
		return podmap.PodDevices{Namespace: "ml", Name: name, Devices: refs}
	}

	tests := []struct {
		name      string
		pods      []podmap.PodDevices
		processes []podmap.Process
		want      map[string][]types.UID
		skipped   []string
	}{
		{"nothing holds a GPU", nil, nil, map[string][]types.UID{}, nil},
		{"PodResources alone",
			[]podmap.PodDevices{pod("a", gpu(gpuH100)), pod("b", gpu(gpuFake))}, nil,
			map[string][]types.UID{gpuH100: {uidA}, gpuFake: {uidB}}, nil},
		{"time-sliced GPU: every pod sharing it holds it",
			[]podmap.PodDevices{pod("a", gpu(gpuH100)), pod("b", gpu(gpuH100))}, nil,
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil},
		{"MIG device and index ID count for their GPU",
			[]podmap.PodDevices{pod("a", podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100}), pod("b", podmap.DeviceRef{Kind: podmap.KindIndex})}, nil,
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil},
		{"pod the cache does not hold (gone, or finished) holds nothing",
			[]podmap.PodDevices{pod("finished", gpu(gpuH100)), pod("c", gpu(gpuFake))}, nil,
			map[string][]types.UID{gpuFake: {uidC}}, nil},
		{"unresolvable device is skipped and said, the pod's others stay",
			[]podmap.PodDevices{pod("a", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 7}, gpu(gpuFake))}, nil,
			map[string][]types.UID{gpuFake: {uidA}}, []string{"pod ml/a: resolve device 7: not found"}},
		{"process adds its pod to a GPU PodResources did not list",
			[]podmap.PodDevices{pod("b", gpu(gpuFake))}, []podmap.Process{{GPU: gpuH100, PID: 100}},
			map[string][]types.UID{gpuFake: {uidB}, gpuH100: {uidD}}, nil},
		{"process never takes away what PodResources said",
			[]podmap.PodDevices{pod("b", gpu(gpuH100))}, []podmap.Process{{GPU: gpuH100, PID: 101}},
			map[string][]types.UID{gpuH100: {uidA, uidB}}, nil},
		{"process of a listed pod adds nothing new",
			[]podmap.PodDevices{pod("a", gpu(gpuH100))}, []podmap.Process{{GPU: gpuH100, PID: 101}},
			map[string][]types.UID{gpuH100: {uidA}}, nil},
		{"one process on two GPUs",
			nil, []podmap.Process{{GPU: gpuH100, PID: 100}, {GPU: gpuFake, PID: 100}},
			map[string][]types.UID{gpuH100: {uidD}, gpuFake: {uidD}}, nil},
		{"process outside any pod maps to nothing",
			nil, []podmap.Process{{GPU: gpuH100, PID: 440}},
			map[string][]types.UID{}, nil},
		{"process that exited after NVML listed it is skipped silently",
			nil, []podmap.Process{{GPU: gpuH100, PID: 9999}, {GPU: gpuH100, PID: 100}},
			map[string][]types.UID{gpuH100: {uidD}}, nil},
		{"PIDs 0, negative and beyond pid_max are skipped silently",
			nil, []podmap.Process{{GPU: gpuH100, PID: 0}, {GPU: gpuH100, PID: -5}, {GPU: gpuH100, PID: 1 << 40}},
			map[string][]types.UID{}, nil},
		{"unreadable cgroup is skipped and said",
			nil, []podmap.Process{{GPU: gpuH100, PID: 666}, {GPU: gpuFake, PID: 666}, {GPU: gpuFake, PID: 101}},
			map[string][]types.UID{gpuFake: {uidA}}, []string{"process on " + gpuH100 + ": cgroup of pid 666: longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			holders, skipped := podmap.Build(podmap.Sources{
				Pods:      tt.pods,
				UIDOf:     uidOf,
				Resolver:  resolver,
				Processes: tt.processes,
				Proc:      proc,
			})
			got := map[string][]types.UID{}
			for gpu, pods := range holders {
				got[gpu] = sets.List(pods)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Build = %v; want %v", got, tt.want)
			}
			if len(skipped) != len(tt.skipped) {
				t.Fatalf("Build skipped %v; want %q", skipped, tt.skipped)
			}
			for i, err := range skipped {
				if !strings.Contains(err.Error(), tt.skipped[i]) {
					t.Errorf("skipped[%d] = %v; want one containing %q", i, err, tt.skipped[i])
				}
			}
		})
	}
}

func TestBuildPIDCache(t *testing.T) {
	const uid = "d8259892-8372-41e6-a3ca-595e7e9a7d82"
	proc := fstest.MapFS{"42/cgroup": &fstest.MapFile{Data: []byte("0::/kubepods/besteffort/pod" + uid + "/abc\n")}}
	cache := &podmap.PIDCache{}
	src := podmap.Sources{Processes: []podmap.Process{{GPU: "GPU-a", PID: 42}}, Proc: proc, Cache: cache}
	if h, _ := podmap.Build(src); !h["GPU-a"].Has(uid) {
		t.Fatalf("first cycle: %v", h)
	}
	// The same PID in the next cycle is not read again.
	delete(proc, "42/cgroup")
	if h, _ := podmap.Build(src); !h["GPU-a"].Has(uid) {
		t.Fatalf("second cycle did not use the cache: %v", h)
	}
	// A cycle without the PID forgets it; a reused PID is read afresh.
	src.Processes = nil
	podmap.Build(src)
	src.Processes = []podmap.Process{{GPU: "GPU-a", PID: 42}}
	if h, _ := podmap.Build(src); h["GPU-a"].Len() != 0 {
		t.Fatalf("a PID that left and came back was not read again: %v", h)
	}
}
