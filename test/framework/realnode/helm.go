package realnode

import (
	"context"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/kubectl"
)

// HelmRelease and HelmChart: the release the real node installs the chart
// as, into the namespace the manifests use, as the chart's README does.
const (
	HelmRelease = "gpu-power"
	HelmChart   = "deploy/helm/gpu-power"
)

// HelmBinary is the helm CLI `make helm` builds from its Go module
// (helm.sh/helm/v4, the Makefile's HELM_VERSION).
func HelmBinary(root string) string { return filepath.Join(root, "bin", "tools", "helm") }

// HelmValues are the chart values that make, through the chart, exactly the
// changes WebhookManifests and AgentManifest make to the shipped manifests:
//
//   - webhook.clientAuth.enabled with caBundle the API server's client CA:
//     the Secret ClientCASecret holding ca.crt alone, and the Deployment as
//     optional/client-auth-deployment-patch.yaml patches it (no cert-manager
//     objects: the harness made the CA before kube-apiserver started);
//   - agent.extraArgs [FakeNVMLArg].
//
// Images and everything else are the chart's defaults: the references the
// manifests name, which the node imported.
func HelmValues(clientCA []byte) ([]byte, error) {
	return yaml.Marshal(map[string]any{
		"webhook": map[string]any{"clientAuth": map[string]any{"enabled": true, "caBundle": string(clientCA)}},
		"agent":   map[string]any{"extraArgs": []string{FakeNVMLArg}},
	})
}

// Helm runs the helm CLI (helm) against the cluster as its admin. Helm's
// cache, configuration and data live in home, not in the caller's $HOME.
func (c *Cluster) Helm(ctx context.Context, helm, home string, args ...string) (string, error) {
	return kubectl.Runner{Bin: helm, Kubeconfig: Kubeconfig, Env: []string{
		"HELM_CACHE_HOME=" + filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME=" + filepath.Join(home, "config"),
		"HELM_DATA_HOME=" + filepath.Join(home, "data"),
	}}.Run(ctx, "", args...)
}
