package policy

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// GPUDemand is what a pod asks of NVIDIA GPUs.
type GPUDemand struct {
	// GPUs is the effective nvidia.com/gpu request: what the scheduler reserves.
	GPUs int64
	// MIG lists the MIG slice resources the pod requests, sorted.
	MIG []corev1.ResourceName
	// Claims is set when the pod gets devices through DRA resourceClaims.
	Claims bool
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
		n := containerGPUs(c)
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars += n
			initPeak = max(initPeak, sidecars)
			continue
		}
		initPeak = max(initPeak, sidecars+n)
	}
	apps := sidecars
	for i := range spec.Containers {
		c := &spec.Containers[i]
		d.addMIG(c)
		apps += containerGPUs(c)
	}
	d.GPUs = max(apps, initPeak)
	d.Claims = len(spec.ResourceClaims) > 0
	slices.Sort(d.MIG)
	d.MIG = slices.Compact(d.MIG)
	return d
}

func containerGPUs(c *corev1.Container) int64 {
	if q, ok := c.Resources.Requests[ResourceGPU]; ok {
		return q.Value()
	}
	if q, ok := c.Resources.Limits[ResourceGPU]; ok {
		return q.Value()
	}
	return 0
}

func (d *GPUDemand) addMIG(c *corev1.Container) {
	for _, list := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
		for name, q := range list {
			if strings.HasPrefix(string(name), ResourceMIGPrefix) && !q.IsZero() {
				d.MIG = append(d.MIG, name)
			}
		}
	}
}
