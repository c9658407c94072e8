package policy

import "k8s.io/apimachinery/pkg/util/validation/field"

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
)

var (
	annotationsPath = field.NewPath("metadata", "annotations")
	// LimitPath is where denials of the limit annotation point.
	LimitPath = annotationsPath.Key(AnnotationPowerLimit)
	// StampPath is where denials of the validation stamp point.
	StampPath = annotationsPath.Key(AnnotationPowerLimitValidated)
	// SignaturePath is where denials of the stamp's signature point.
	SignaturePath = annotationsPath.Key(AnnotationPowerLimitSignature)
)

// SkippedNamespaces are the namespaces the webhook's pod webhooks never see:
// each of them in deploy/webhook/60-* and 61-* has the namespaceSelector
// kubernetes.io/metadata.name NotIn exactly these. A stamp on a pod there
// was typed by someone, not set by the webhook, so the agent does not enforce
// it (its --webhook-skipped-namespaces defaults to this list).
// TestSkippedNamespacesAgree (test/manifests) fails when the manifests and
// this list differ: changing one means changing the other.
var SkippedNamespaces = []string{"kube-system", "dynamo-system"}
