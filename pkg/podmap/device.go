package podmap

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// DeviceKind says how a device plugin named a device.
type DeviceKind int

const (
	// KindGPU is a whole GPU named by its UUID ("GPU-<uuid>").
	KindGPU DeviceKind = iota + 1
	// KindMIG is a MIG device named by its own UUID ("MIG-<uuid>"); only NVML
	// knows the GPU it lives on.
	KindMIG
	// KindIndex is a GPU named by its NVML index ("3"), or the GPU a MIG
	// device lives on ("3:1" is MIG device 1 of GPU 3): the device plugin's
	// index ID strategy.
	KindIndex
	// KindDRA is a device NVIDIA's DRA driver allocated, named by its pool
	// and device name ("gpu-3" in the node's pool); only the driver's
	// ResourceSlice says which GPU it is.
	KindDRA
)

// DeviceRef is a device ID from PodResources, reduced to what names a GPU:
// replica suffixes of shared GPUs are gone, and a MIG device in index form is
// already its parent GPU's index.
type DeviceRef struct {
	Kind DeviceKind
	// UUID is the UUID with its prefix ("GPU-…", "MIG-…") for KindGPU and KindMIG.
	UUID string
	// Index is the GPU's NVML index for KindIndex.
	Index int
	// Pool and Device name a KindDRA device.
	Pool, Device string
	// Part is set for a share of a GPU (a replica, "::N") or a MIG device,
	// which several pods may hold at once. A whole GPU is one pod's alone.
	Part bool
}

func (r DeviceRef) String() string {
	switch r.Kind {
	case KindIndex:
		return strconv.Itoa(r.Index)
	case KindDRA:
		return policy.DriverGPU + "/" + r.Pool + "/" + r.Device
	}
	return r.UUID
}

const (
	gpuPrefix = "GPU-"
	migPrefix = "MIG-"
	// maxIndexDigits and maxReplicaDigits bound numbers that a device plugin
	// prints with %d: a node has a handful of GPUs and a GPU a handful of
	// replicas, so longer numbers are not from a device plugin.
	maxIndexDigits   = 3
	maxReplicaDigits = 6
)

// isGPUResource reports whether a PodResources resource name allocates
// NVIDIA GPUs: whole GPUs, their time-sliced replicas under
// renameByDefault, or MIG devices of one profile.
func isGPUResource(resource string) bool {
	return resource == policy.ResourceGPU || resource == policy.ResourceGPUShared ||
		len(resource) > len(policy.ResourceMIGPrefix) && strings.HasPrefix(resource, policy.ResourceMIGPrefix)
}

// ParseDeviceID parses a device ID that kubelet's PodResources reports under a
// GPU resource. The forms, each with an optional "::<replica>" that GPU
// sharing (time-slicing, MPS) appends:
//
//	GPU-<uuid>        a GPU
//	MIG-<uuid>        a MIG device (nvidia.com/mig-*, or nvidia.com/gpu under the single MIG strategy)
//	<index>           a GPU by NVML index
//	<index>:<mig>     a MIG device by index; its parent is GPU <index>
//
// UUIDs are lowercase 8-4-4-4-12 hex, the way NVML prints them; numbers are
// decimal without leading zeros, the way the device plugin prints them.
func ParseDeviceID(resource, id string) (DeviceRef, error) {
	if !isGPUResource(resource) {
		return DeviceRef{}, fmt.Errorf("device %q: resource %q is not an NVIDIA GPU resource", id, resource)
	}
	base, replica, shared := strings.Cut(id, "::")
	if shared {
		if _, ok := smallDecimal(replica, maxReplicaDigits); !ok {
			return DeviceRef{}, fmt.Errorf("device %q of %s: replica %q is not a decimal of at most %d digits", id, resource, replica, maxReplicaDigits)
		}
	}
	kind := KindGPU
	uuid, named := strings.CutPrefix(base, gpuPrefix)
	if !named {
		kind = KindMIG
		uuid, named = strings.CutPrefix(base, migPrefix)
	}
	if named {
		if !isUUID(uuid, '-') {
			return DeviceRef{}, fmt.Errorf("device %q of %s: %q is not lowercase 8-4-4-4-12 hex", id, resource, uuid)
		}
		return DeviceRef{Kind: kind, UUID: base, Part: shared || kind == KindMIG}, nil
	}
	gpu, mig, isMIG := strings.Cut(base, ":")
	index, ok := smallDecimal(gpu, maxIndexDigits)
	if ok && isMIG {
		_, ok = smallDecimal(mig, maxIndexDigits)
	}
	if !ok {
		return DeviceRef{}, fmt.Errorf("device %q of %s: not GPU-<uuid>, MIG-<uuid>, <index> or <index>:<mig>", id, resource)
	}
	return DeviceRef{Kind: KindIndex, Index: index, Part: shared || isMIG}, nil
}

// smallDecimal parses a non-negative decimal of at most digits digits, written
// without leading zeros.
func smallDecimal(s string, digits int) (int, bool) {
	if s == "" || len(s) > digits || len(s) > 1 && s[0] == '0' || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

// Resolver turns a DeviceRef into the UUID of the GPU whose power limit it
// falls under. Its lookups answer what only NVML knows.
type Resolver struct {
	// MIGParent returns the UUID ("GPU-…") of the GPU a MIG device ("MIG-…") lives on.
	MIGParent func(migUUID string) (string, error)
	// DRADevice returns the UUID of the GPU a device of NVIDIA's DRA driver
	// is (DRAResolver), or lives on for a MIG device.
	DRADevice func(pool, device string) (string, error)
	// GPUByIndex returns the UUID of the GPU with this NVML index; the device
	// plugin's index IDs are NVML's indexes.
	GPUByIndex func(index int) (string, error)
}

// GPU returns the UUID of the GPU that ref is, or that ref lives on.
func (r Resolver) GPU(ref DeviceRef) (string, error) {
	var uuid string
	var err error
	switch {
	case ref.Kind == KindGPU:
		return ref.UUID, nil
	case ref.Kind == KindMIG && r.MIGParent != nil:
		uuid, err = r.MIGParent(ref.UUID)
	case ref.Kind == KindIndex && r.GPUByIndex != nil:
		uuid, err = r.GPUByIndex(ref.Index)
	case ref.Kind == KindDRA && r.DRADevice != nil:
		uuid, err = r.DRADevice(ref.Pool, ref.Device)
	default:
		return "", fmt.Errorf("resolve device %s: no lookup for its kind", ref)
	}
	if err != nil {
		return "", fmt.Errorf("resolve device %s: %w", ref, err)
	}
	// Holders is keyed by what NVML reports for processes; a lookup that
	// answers in another spelling would split one GPU in two.
	if u, ok := strings.CutPrefix(uuid, gpuPrefix); !ok || !isUUID(u, '-') {
		return "", fmt.Errorf("resolve device %s: lookup returned %q, not GPU-<uuid>", ref, uuid)
	}
	return uuid, nil
}
