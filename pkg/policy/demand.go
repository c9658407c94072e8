package policy

import (
	"iter"
	"math"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// DefaultMaxGPUsPerPod is the most GPUs a pod may request unless the
// operator sets another bound: far above the 8 or 16 GPUs of the largest
// nodes (and their time-sliced replicas), so it denies only pods that could
// never be scheduled, while keeping every cost far from overflow. It is a
// fixed number rather than the largest node's capacity so that a pod that
// waits for an autoscaler to bring its first GPU node is still admitted.
const DefaultMaxGPUsPerPod = 256

// GPUDemand is what a pod asks of NVIDIA GPUs, through the device plugin's
// resources or NVIDIA's DRA DeviceClasses as extended resources.
type GPUDemand struct {
	// GPUs is the effective whole-GPU request (nvidia.com/gpu and the
	// time-sliced nvidia.com/gpu.shared): what the scheduler reserves. It
	// saturates at math.MaxInt64 and is never negative.
	GPUs int64
	// Shared is set when the pod requests nvidia.com/gpu.shared: replicas of
	// time-sliced boards that other pods share.
	Shared bool
	// MIG lists the MIG slice resources the pod requests, sorted.
	MIG []corev1.ResourceName
	// Claims is set when the pod gets devices through DRA resourceClaims.
	Claims bool
	// Passthrough is set when the pod requests GPUs bound to vfio-pci for a
	// virtual machine (ResourceDRAVFIO): counted in GPUs, but driven by the
	// guest's driver, not the node's NVML.
	Passthrough bool
	// FromClaims is what its ResourceClaims ask (demandWith); their GPUs
	// are counted in GPUs.
	FromClaims ClaimsDemand
}

// demandWith is a pod spec's demand with what its claims ask added.
func demandWith(spec *corev1.PodSpec, claims ClaimsDemand) GPUDemand {
	d := DemandOf(spec)
	d.FromClaims = claims
	d.GPUs = SatAdd(d.GPUs, claims.GPUs)
	return d
}

// DemandOf computes a pod's GPU demand the way the scheduler computes an
// effective request: app containers and sidecars (restartable init containers)
// add up; a regular init container runs alone beside the sidecars started
// before it, so the pod needs the larger of the two. A container's limit
// counts where it has no request (the API server defaults one to the other).
func DemandOf(spec *corev1.PodSpec) GPUDemand {
	var d GPUDemand
	var sidecars, initPeak int64
	for i := range spec.InitContainers {
		c := &spec.InitContainers[i]
		d.addMIG(c)
		n := d.containerGPUs(c)
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars = SatAdd(sidecars, n)
			initPeak = max(initPeak, sidecars)
			continue
		}
		initPeak = max(initPeak, SatAdd(sidecars, n))
	}
	apps := sidecars
	for i := range spec.Containers {
		c := &spec.Containers[i]
		d.addMIG(c)
		apps = SatAdd(apps, d.containerGPUs(c))
	}
	d.GPUs = max(apps, initPeak)
	d.Claims = len(spec.ResourceClaims) > 0
	slices.Sort(d.MIG)
	d.MIG = slices.Compact(d.MIG)
	return d
}

// WholeGPUResources are the resources that give a pod whole GPUs: the
// device plugin's, and NVIDIA's DRA classes' (each DeviceClass is also an
// extended resource, served through a ResourceClaim the scheduler makes).
var WholeGPUResources = []corev1.ResourceName{ResourceGPU, ResourceGPUShared, ResourceDRAGPU, ResourceDRAVFIO}

// containerGPUs adds up a container's whole-GPU resources.
func (d *GPUDemand) containerGPUs(c *corev1.Container) int64 {
	var n int64
	for _, name := range WholeGPUResources {
		if g := resourceCount(c, name); g > 0 {
			n = SatAdd(n, g)
			d.Shared = d.Shared || name == ResourceGPUShared
			d.Passthrough = d.Passthrough || name == ResourceDRAVFIO
		}
	}
	return n
}

// resourceCount is a container's request of a resource, or its limit where
// it has no request, as a count: rounded up, negative as zero, saturating
// where the quantity does not fit an int64 (the mutating webhook sees
// objects before the API server validates them).
func resourceCount(c *corev1.Container, name corev1.ResourceName) int64 {
	q, ok := c.Resources.Requests[name]
	if !ok {
		if q, ok = c.Resources.Limits[name]; !ok {
			return 0
		}
	}
	if q.Sign() <= 0 {
		return 0
	}
	if n, exact := q.AsInt64(); exact {
		return n
	}
	if q.Cmp(*resource.NewQuantity(math.MaxInt64, resource.DecimalSI)) >= 0 {
		return math.MaxInt64
	}
	return q.Value() // a fraction, rounded up
}

// resourceNames yields every resource a pod spec's containers and init
// containers request or limit, once per appearance.
func resourceNames(spec *corev1.PodSpec) iter.Seq[corev1.ResourceName] {
	return func(yield func(corev1.ResourceName) bool) {
		for _, cs := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
			for _, c := range cs {
				for _, list := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
					for name := range list {
						if !yield(name) {
							return
						}
					}
				}
			}
		}
	}
}

func (d *GPUDemand) addMIG(c *corev1.Container) {
	for _, list := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
		for name, q := range list {
			if (name == ResourceDRAMIG || strings.HasPrefix(string(name), ResourceMIGPrefix)) && !q.IsZero() {
				d.MIG = append(d.MIG, name)
			}
		}
	}
}
