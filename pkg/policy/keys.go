package policy

import (
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// The contract: names users and other components type. Nothing else in the
// module spells these strings.
const (
	// AnnotationPowerLimit is the per-GPU power limit a pod asks for, in whole watts.
	AnnotationPowerLimit = "dynamo.nvidia.com/gpu-power-limit"
	// AnnotationPowerLimitValidated is set only by the webhook, to the limit it
	// admitted; the agent enforces a pod's limit only when both are equal.
	AnnotationPowerLimitValidated = "dynamo.nvidia.com/gpu-power-limit-validated"
	// AnnotationPowerLimitSignature is set only by the webhook, with its
	// stamp, when it signs stamps (StampKey): the agent then enforces only a
	// stamp whose signature it can verify.
	AnnotationPowerLimitSignature = "dynamo.nvidia.com/gpu-power-limit-signature"
	// AnnotationClaimGPUs is set only by the webhook, when it creates a pod
	// whose resourceClaims can get GPUs, to each such claim's GPUs
	// ("gpus=2,shared=1", by spec.resourceClaims[].name): what budgets
	// charge for them, as the GPUs are on the claims, not on the pod.
	AnnotationClaimGPUs = "dynamo.nvidia.com/gpu-claims"
	// AnnotationClaimGPUsSignature is the webhook's signature of
	// AnnotationClaimGPUs, when it signs stamps.
	AnnotationClaimGPUsSignature = "dynamo.nvidia.com/gpu-claims-signature"

	// LabelGPUProduct is the node label GPU Feature Discovery sets to the GPU model.
	LabelGPUProduct = "nvidia.com/gpu.product"

	// ResourceGPU is the extended resource of whole GPUs.
	ResourceGPU = "nvidia.com/gpu"
	// ResourceGPUShared is the resource of time-sliced GPU replicas when the
	// device plugin renames them (sharing.timeSlicing.renameByDefault).
	ResourceGPUShared = "nvidia.com/gpu.shared"
	// ResourceMIGPrefix starts the extended resources of MIG slices
	// (nvidia.com/mig-1g.10gb and the like).
	ResourceMIGPrefix = "nvidia.com/mig-"

	// ResourceDeviceClassPrefix starts the extended resource every
	// DeviceClass has implicitly: a pod asking for
	// deviceclass.resource.kubernetes.io/<class>: N gets N devices of the
	// class through dynamic resource allocation (DRA).
	ResourceDeviceClassPrefix = "deviceclass.resource.kubernetes.io/"
	// DriverGPU is NVIDIA's DRA driver: the driver of its devices, and the
	// domain of their attributes (productName, uuid, type, parentUUID).
	DriverGPU = "gpu.nvidia.com"
	// DeviceClassGPU, DeviceClassMIG and DeviceClassVFIO are the
	// DeviceClasses NVIDIA's DRA driver installs: whole GPUs, MIG devices,
	// and GPUs bound to vfio-pci for passthrough to a virtual machine.
	DeviceClassGPU  = "gpu.nvidia.com"
	DeviceClassMIG  = "mig.nvidia.com"
	DeviceClassVFIO = "vfio.gpu.nvidia.com"
	// ResourceDRAGPU, ResourceDRAMIG and ResourceDRAVFIO are those classes'
	// extended resources.
	ResourceDRAGPU  = ResourceDeviceClassPrefix + DeviceClassGPU
	ResourceDRAMIG  = ResourceDeviceClassPrefix + DeviceClassMIG
	ResourceDRAVFIO = ResourceDeviceClassPrefix + DeviceClassVFIO
)

// ReadsResource reports whether policy reads a resource of a container:
// every extended resource (a name with a domain: NVIDIA's, the
// DeviceClasses', and any other a DeviceClass may serve through DRA as its
// extendedResourceName); the webhook's decoder skips the rest (cpu,
// memory, hugepages).
func ReadsResource(name string) bool {
	return strings.Contains(name, "/")
}

// WebhookAnnotations are the annotations only admission of the pod itself
// may set or change: the limit, and what the webhook writes beside it. The
// pods/status and binding webhooks (deploy/webhook/61-*) name each of them.
var WebhookAnnotations = []string{AnnotationPowerLimit, AnnotationPowerLimitValidated, AnnotationPowerLimitSignature,
	AnnotationClaimGPUs, AnnotationClaimGPUsSignature}

var (
	annotationsPath = field.NewPath("metadata", "annotations")
	// LimitPath is where denials of the limit annotation point.
	LimitPath = annotationsPath.Key(AnnotationPowerLimit)
	// StampPath is where denials of the validation stamp point.
	StampPath = annotationsPath.Key(AnnotationPowerLimitValidated)
	// SignaturePath is where denials of the stamp's signature point.
	SignaturePath = annotationsPath.Key(AnnotationPowerLimitSignature)
	// ClaimGPUsPath is where denials of the claims' GPU counts point.
	ClaimGPUsPath = annotationsPath.Key(AnnotationClaimGPUs)
	// ClaimGPUsSignaturePath is where denials of their signature point.
	ClaimGPUsSignaturePath = annotationsPath.Key(AnnotationClaimGPUsSignature)
)

// SkippedNamespaces are the namespaces the webhook's pod webhooks never see:
// each of them in deploy/webhook/60-* and 61-* has the namespaceSelector
// kubernetes.io/metadata.name NotIn exactly these. A stamp on a pod there
// was typed by someone, not set by the webhook, so the agent does not enforce
// it (its --webhook-skipped-namespaces defaults to this list).
// TestSkippedNamespacesAgree (test/manifests) fails when the manifests and
// this list differ: changing one means changing the other.
var SkippedNamespaces = []string{"kube-system", "dynamo-system"}
