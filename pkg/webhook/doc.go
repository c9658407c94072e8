// Package webhook serves the power admission webhooks: it decodes admission
// requests, asks pkg/policy for the verdict, and answers with a denial, or an
// admission with the smallest JSON patch that makes the pod carry the verdict's
// annotations. It also keeps the cluster view policy reads (GPU products by
// node) and the caches' transforms.
package webhook
