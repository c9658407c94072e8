package podmap_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// The H100 of the NVML probe, a GPU a fake device plugin offered to a real
// kubelet, and a MIG device on the H100.
const (
	gpuH100 = "GPU-04efd212-9e79-ab41-d439-40c9b52a0202"
	gpuFake = "GPU-11111111-2222-3333-4444-555555555555"
	migH100 = "MIG-8b4f1c2e-5d6a-5b7c-9e0f-1a2b3c4d5e6f"
	mig1g   = policy.ResourceMIGPrefix + "1g.10gb"
)

var deviceTests = []struct {
	name     string
	resource string
	id       string
	want     podmap.DeviceRef
	wantErr  string
}{
	{"whole GPU by UUID", policy.ResourceGPU, gpuH100, podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpuH100}, ""},
	{"what a real kubelet reported", policy.ResourceGPU, gpuFake, podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpuFake}, ""},
	{"time-sliced replica is its GPU", policy.ResourceGPU, gpuH100 + "::3", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}, ""},
	{"renamed time-sliced replica is its GPU", policy.ResourceGPUShared, gpuH100 + "::3", podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpuH100, Part: true}, ""},
	{"MIG device of a MIG resource", mig1g, migH100, podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100, Part: true}, ""},
	{"MIG device as nvidia.com/gpu (single strategy)", policy.ResourceGPU, migH100, podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100, Part: true}, ""},
	{"shared MIG device", mig1g, migH100 + "::0", podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100, Part: true}, ""},
	{"GPU by index", policy.ResourceGPU, "0", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 0}, ""},
	{"GPU by two-digit index", policy.ResourceGPU, "12", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 12}, ""},
	{"shared GPU by index", policy.ResourceGPU, "3::2", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 3, Part: true}, ""},
	{"MIG device by index is its parent GPU", mig1g, "3:1", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 3, Part: true}, ""},
	{"shared MIG device by index", mig1g, "3:1::4", podmap.DeviceRef{Kind: podmap.KindIndex, Index: 3, Part: true}, ""},

	{"CPU is not a GPU resource", "cpu", "0", podmap.DeviceRef{}, `resource "cpu" is not an NVIDIA GPU resource`},
	{"another vendor's GPU", "amd.com/gpu", "0", podmap.DeviceRef{}, "not an NVIDIA GPU resource"},
	{"MIG prefix without a profile", policy.ResourceMIGPrefix, migH100, podmap.DeviceRef{}, "not an NVIDIA GPU resource"},
	{"uppercase UUID", policy.ResourceGPU, "GPU-" + strings.ToUpper(gpuH100[4:]), podmap.DeviceRef{}, "not lowercase 8-4-4-4-12 hex"},
	{"short UUID", policy.ResourceGPU, gpuH100[:len(gpuH100)-1], podmap.DeviceRef{}, "not lowercase 8-4-4-4-12 hex"},
	{"UUID with trailing text", policy.ResourceGPU, gpuH100 + "x", podmap.DeviceRef{}, "not lowercase 8-4-4-4-12 hex"},
	{"lowercase prefix", policy.ResourceGPU, "gpu-" + gpuH100[4:], podmap.DeviceRef{}, "not GPU-<uuid>, MIG-<uuid>, <index> or <index>:<mig>"},
	{"UUID without prefix", policy.ResourceGPU, gpuH100[4:], podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"pre-R470 MIG name", mig1g, "MIG-" + gpuH100 + "/1/0", podmap.DeviceRef{}, "not lowercase 8-4-4-4-12 hex"},
	{"empty replica", policy.ResourceGPU, gpuH100 + "::", podmap.DeviceRef{}, `replica "" is not a decimal`},
	{"replica not a number", policy.ResourceGPU, gpuH100 + "::x", podmap.DeviceRef{}, `replica "x"`},
	{"replica with a leading zero", policy.ResourceGPU, gpuH100 + "::01", podmap.DeviceRef{}, `replica "01"`},
	{"two replica suffixes", policy.ResourceGPU, gpuH100 + "::1::2", podmap.DeviceRef{}, `replica "1::2"`},
	{"replica too long", policy.ResourceGPU, gpuH100 + "::1234567", podmap.DeviceRef{}, "at most 6 digits"},
	{"empty", policy.ResourceGPU, "", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"negative index", policy.ResourceGPU, "-1", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"index with a leading zero", policy.ResourceGPU, "01", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"index too large", policy.ResourceGPU, "1000", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"index with a space", policy.ResourceGPU, " 1", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"MIG index without a GPU", mig1g, ":1", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"MIG index without a slice", mig1g, "3:", podmap.DeviceRef{}, "not GPU-<uuid>"},
	{"MIG index with three parts", mig1g, "3:1:2", podmap.DeviceRef{}, "not GPU-<uuid>"},
}

func TestParseDeviceID(t *testing.T) {
	for _, tt := range deviceTests {
		t.Run(tt.name, func(t *testing.T) {
			ref, err := podmap.ParseDeviceID(tt.resource, tt.id)
			if ref != tt.want {
				t.Errorf("ParseDeviceID(%q, %q) = %+v; want %+v", tt.resource, tt.id, ref, tt.want)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("ParseDeviceID(%q, %q) error = %v; want one containing %q", tt.resource, tt.id, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.id)) {
				t.Errorf("error %q does not name the device %q", err, tt.id)
			}
		})
	}
}

func FuzzParseDeviceID(f *testing.F) {
	for _, tt := range deviceTests {
		f.Add(tt.resource, tt.id)
	}
	f.Fuzz(func(t *testing.T, resource, id string) {
		ref, err := podmap.ParseDeviceID(resource, id)
		if err != nil {
			if ref != (podmap.DeviceRef{}) {
				t.Fatalf("ParseDeviceID(%q, %q) = %+v with error %v", resource, id, ref, err)
			}
			return
		}
		// What names the GPU is the ID's start, and parses to itself.
		if !strings.HasPrefix(id, ref.String()) {
			t.Fatalf("ParseDeviceID(%q, %q) = %+v, not the ID's start", resource, id, ref)
		}
		// The part of a GPU it names (a replica, a MIG device) is not in it.
		again, err := podmap.ParseDeviceID(resource, ref.String())
		whole := ref
		whole.Part = ref.Kind == podmap.KindMIG
		if err != nil || again != whole {
			t.Fatalf("ParseDeviceID(%q, %q) = %+v, which parses to %+v, %v", resource, id, ref, again, err)
		}
		switch ref.Kind {
		case podmap.KindGPU, podmap.KindMIG:
			if !podUID.MatchString(ref.UUID[len("GPU-"):]) {
				t.Fatalf("ParseDeviceID(%q, %q) = %+v, not a UUID", resource, id, ref)
			}
		case podmap.KindIndex:
			if ref.Index < 0 || ref.Index > 999 {
				t.Fatalf("ParseDeviceID(%q, %q) = %+v, index out of range", resource, id, ref)
			}
		default:
			t.Fatalf("ParseDeviceID(%q, %q) = %+v, no kind", resource, id, ref)
		}
	})
}

func TestResolverGPU(t *testing.T) {
	errNVML := errors.New("nvml: not found")
	r := podmap.Resolver{
		MIGParent: func(mig string) (string, error) {
			if mig == migH100 {
				return gpuH100, nil
			}
			return "", errNVML
		},
		GPUByIndex: func(i int) (string, error) {
			switch i {
			case 0:
				return gpuH100, nil
			case 9:
				return "GPU-NOT-A-UUID", nil
			}
			return "", errNVML
		},
	}
	tests := []struct {
		name     string
		resolver podmap.Resolver
		ref      podmap.DeviceRef
		want     string
		wantErr  string
	}{
		{"GPU is itself", podmap.Resolver{}, podmap.DeviceRef{Kind: podmap.KindGPU, UUID: gpuFake}, gpuFake, ""},
		{"MIG device is its parent", r, podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100}, gpuH100, ""},
		{"index is the GPU NVML numbers so", r, podmap.DeviceRef{Kind: podmap.KindIndex, Index: 0}, gpuH100, ""},
		{"MIG device NVML does not know", r, podmap.DeviceRef{Kind: podmap.KindMIG, UUID: "MIG-00000000-0000-0000-0000-000000000000"}, "", "resolve device MIG-00000000-0000-0000-0000-000000000000: nvml: not found"},
		{"index NVML does not know", r, podmap.DeviceRef{Kind: podmap.KindIndex, Index: 5}, "", "resolve device 5: nvml: not found"},
		{"lookup answering in another spelling", r, podmap.DeviceRef{Kind: podmap.KindIndex, Index: 9}, "", `lookup returned "GPU-NOT-A-UUID"`},
		{"MIG device without a MIG lookup", podmap.Resolver{}, podmap.DeviceRef{Kind: podmap.KindMIG, UUID: migH100}, "", "no lookup for its kind"},
		{"index without an index lookup", podmap.Resolver{}, podmap.DeviceRef{Kind: podmap.KindIndex, Index: 0}, "", "resolve device 0: no lookup"},
		{"zero reference", r, podmap.DeviceRef{}, "", "no lookup for its kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.resolver.GPU(tt.ref)
			if got != tt.want {
				t.Errorf("GPU(%v) = %q; want %q", tt.ref, got, tt.want)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("GPU(%v) error = %v; want one containing %q", tt.ref, err, tt.wantErr)
			}
			if strings.Contains(tt.wantErr, "nvml") && !errors.Is(err, errNVML) {
				t.Errorf("GPU(%v) error %v does not wrap the lookup's", tt.ref, err)
			}
		})
	}
}
