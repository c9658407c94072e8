package gpusim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/dynamic-resource-allocation/resourceslice"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// DRADriver is a fake of NVIDIA's DRA kubelet plugin (driver
// gpu.nvidia.com) for the simulated GPUs: it publishes them in a
// ResourceSlice with the attributes NVIDIA's driver gives them (type, uuid,
// productName, architecture; device gpu-<minor>, the pool named after the
// node), installs NVIDIA's gpu.nvidia.com DeviceClass, and prepares the
// claims the scheduler allocates from them, without CDI (this node's
// containerd has none): a container starts with no device, as every
// simulated GPU's does.
type DRADriver struct {
	Client   kubernetes.Interface
	NodeName string
	// GPUs are the simulated GPUs it publishes: their NVML index (the minor
	// number NVIDIA's driver names devices by) and UUID.
	GPUs map[int]string
	// KubeletDir is the kubelet's --root-dir: its plugins_registry is where
	// the kubelet finds the driver.
	KubeletDir string
	// Product is the productName attribute: NVML's name of the GPUs.
	Product string
}

// DeviceClass is NVIDIA's DeviceClass for whole GPUs on resource.k8s.io/v1
// (its Helm chart's deviceclass-gpu.yaml), without the extendedResourceName
// nvidia.com/gpu NVIDIA's has: on this node the device plugin serves
// nvidia.com/gpu, and the DRA GPUs are asked for by the class's own
// resource (deviceclass.resource.kubernetes.io/gpu.nvidia.com) or a claim.
// The test of a plain nvidia.com/gpu pod served through DRA adds it while
// it withdraws the device plugin's GPUs (Plugin.Withdraw).
func DeviceClass() *resourcev1.DeviceClass {
	return &resourcev1.DeviceClass{ObjectMeta: metav1.ObjectMeta{Name: policy.DeviceClassGPU}, Spec: resourcev1.DeviceClassSpec{
		Selectors: []resourcev1.DeviceSelector{{CEL: &resourcev1.CELDeviceSelector{
			Expression: "device.driver == 'gpu.nvidia.com' && device.attributes['gpu.nvidia.com'].type == 'gpu'"}}},
	}}
}

// Run starts the driver and publishes the GPUs, until ctx ends.
func (d *DRADriver) Run(ctx context.Context, logf func(string, ...any)) error {
	if _, err := d.Client.ResourceV1().DeviceClasses().Create(ctx, DeviceClass(), metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create DeviceClass %s: %w", policy.DeviceClassGPU, err)
	}
	dataDir := filepath.Join(d.KubeletDir, "plugins", policy.DriverGPU)
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return err
	}
	helper, err := kubeletplugin.Start(ctx, d,
		kubeletplugin.DriverName(policy.DriverGPU),
		kubeletplugin.NodeName(d.NodeName),
		kubeletplugin.KubeClient(d.Client),
		kubeletplugin.RegistrarDirectoryPath(filepath.Join(d.KubeletDir, "plugins_registry")),
		kubeletplugin.PluginDataDirectoryPath(dataDir),
		kubeletplugin.HealthService(false),
	)
	if err != nil {
		return fmt.Errorf("start the DRA kubelet plugin: %w", err)
	}
	defer helper.Stop()
	var devices []resourcev1.Device
	for index, uuid := range d.GPUs {
		devices = append(devices, resourcev1.Device{Name: fmt.Sprintf("gpu-%d", index), Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{
			"type":         {StringValue: ptr.To("gpu")},
			"uuid":         {StringValue: ptr.To(uuid)},
			"productName":  {StringValue: ptr.To(d.Product)},
			"architecture": {StringValue: ptr.To("Hopper")},
		}})
	}
	if err := helper.PublishResources(ctx, resourceslice.DriverResources{Pools: map[string]resourceslice.Pool{
		d.NodeName: {Slices: []resourceslice.Slice{{Devices: devices}}},
	}}); err != nil {
		return fmt.Errorf("publish the GPUs: %w", err)
	}
	logf("DRA driver %s registered with the kubelet; %d GPUs published", policy.DriverGPU, len(devices))
	<-ctx.Done()
	return nil
}

// PrepareResourceClaims implements kubeletplugin.DRAPlugin: each claim gets
// the devices of this driver the scheduler allocated it, with no CDI device.
func (d *DRADriver) PrepareResourceClaims(_ context.Context, claims []*resourcev1.ResourceClaim) (map[types.UID]kubeletplugin.PrepareResult, error) {
	out := make(map[types.UID]kubeletplugin.PrepareResult, len(claims))
	for _, c := range claims {
		var res kubeletplugin.PrepareResult
		if c.Status.Allocation == nil {
			res.Err = fmt.Errorf("claim %s/%s is not allocated", c.Namespace, c.Name)
		} else {
			for _, r := range c.Status.Allocation.Devices.Results {
				if r.Driver == policy.DriverGPU {
					res.Devices = append(res.Devices, kubeletplugin.Device{Requests: []string{r.Request}, PoolName: r.Pool, DeviceName: r.Device})
				}
			}
		}
		out[c.UID] = res
	}
	return out, nil
}

// UnprepareResourceClaims implements kubeletplugin.DRAPlugin: there is
// nothing on the node to undo.
func (d *DRADriver) UnprepareResourceClaims(_ context.Context, claims []kubeletplugin.NamespacedObject) (map[types.UID]error, error) {
	out := make(map[types.UID]error, len(claims))
	for _, c := range claims {
		out[c.UID] = nil
	}
	return out, nil
}

// HandleError implements kubeletplugin.DRAPlugin.
func (d *DRADriver) HandleError(_ context.Context, err error, msg string) {
	fmt.Fprintf(os.Stderr, "realnode: DRA driver: %s: %v\n", msg, err)
}

// WatchHealthStatus implements kubeletplugin.DRAPlugin: the simulated GPUs
// report no health.
func (d *DRADriver) WatchHealthStatus(context.Context, chan<- kubeletplugin.DeviceHealthReport) error {
	return kubeletplugin.ErrHealthNotSupported
}

var _ kubeletplugin.DRAPlugin = (*DRADriver)(nil)
