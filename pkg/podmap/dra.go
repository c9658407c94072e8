package podmap

import (
	"errors"
	"fmt"

	resourcev1 "k8s.io/api/resource/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// ErrNotCapped is a DRA device that is no whole GPU a pod's limit may cap:
// a MIG device (its board is shared with other pods' slices; the webhook
// refuses a limit for MIG, and this keeps a claim changed after admission
// from reaching the board) and a vfio device (a virtual machine's driver runs
// it, not the node's NVML). Build leaves such a device out, without
// freezing the node.
var ErrNotCapped = errors.New("not a whole GPU a power limit caps")

// DRAResolver is a Resolver.DRADevice over the node's ResourceSlices: the GPU
// of a device of NVIDIA's DRA driver is its uuid attribute. Only the newest
// generation of a pool counts, as for the scheduler; a MIG or vfio device is
// ErrNotCapped, and one no slice lists, or of an unknown type, an error. The
// attributes are the driver's word: Resolver.GPU checks the UUID's form.
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
		case "mig", "vfio":
			return "", fmt.Errorf("device %q of pool %q, of type %s: %w", device, pool, typ, ErrNotCapped)
		default:
			return "", fmt.Errorf("device %q of pool %q is of type %q, which is no GPU type of %s", device, pool, typ, policy.DriverGPU)
		}
	}
}
