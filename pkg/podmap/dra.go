package podmap

import (
	"fmt"

	resourcev1 "k8s.io/api/resource/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// DRAResolver is a Resolver.DRADevice over the node's ResourceSlices: the GPU
// of a device of NVIDIA's DRA driver is its uuid attribute, or, for a MIG
// device, its parentUUID (a power limit is the board's). Only the newest
// generation of a pool counts, as for the scheduler; a device of another
// driver, a vfio device (driven by a virtual machine's driver, not the
// node's NVML) and one no slice lists resolve to no GPU. The attributes
// are the driver's word: Resolver.GPU checks the UUID's form.
func DRAResolver(slices []*resourcev1.ResourceSlice) func(pool, device string) (string, error) {
	newest := map[string]int64{}
	for _, s := range slices {
		if s.Spec.Driver == policy.DriverGPU {
			if g, ok := newest[s.Spec.Pool.Name]; !ok || s.Spec.Pool.Generation > g {
				newest[s.Spec.Pool.Name] = s.Spec.Pool.Generation
			}
		}
	}
	type key struct{ pool, device string }
	devices := map[key]*resourcev1.Device{}
	for _, s := range slices {
		if s.Spec.Driver != policy.DriverGPU || s.Spec.Pool.Generation != newest[s.Spec.Pool.Name] {
			continue
		}
		for i := range s.Spec.Devices {
			devices[key{s.Spec.Pool.Name, s.Spec.Devices[i].Name}] = &s.Spec.Devices[i]
		}
	}
	return func(pool, device string) (string, error) {
		d, ok := devices[key{pool, device}]
		if !ok {
			return "", fmt.Errorf("no ResourceSlice of %s on this node lists device %q of pool %q", policy.DriverGPU, device, pool)
		}
		switch typ := policy.DriverAttribute(d, "type"); typ {
		case "gpu":
			return policy.DriverAttribute(d, "uuid"), nil
		case "mig":
			return policy.DriverAttribute(d, "parentUUID"), nil
		default:
			return "", fmt.Errorf("device %q of pool %q is of type %q, not a GPU or MIG device the node's NVML drives", device, pool, typ)
		}
	}
}
