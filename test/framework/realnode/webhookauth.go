package realnode

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
)

// ClientCASecret holds the API server's client CA as ca.crt (and, unlike
// the Secret cert-manager makes for optional/client-auth.yaml, no key): the
// Secret the shipped optional/client-auth-deployment-patch.yaml mounts.
//
// The real node runs the webhook with client authentication on (docs/install.md,
// "Authenticating the API server"): kube-apiserver presents a client
// certificate from a CA of its own, and the webhook takes only that (and its
// own replicas). What the shipped deploy/webhook/ gains for it, and nothing
// else, is WebhookManifests'.
const ClientCASecret = "power-webhook-client-ca"

// APIServerAuth is where the cluster keeps the API server's client
// certificate for the webhook, its CA and its admission configuration.
func APIServerAuth() admissionauth.Files {
	return admissionauth.Paths(filepath.Join(Dir, "pki", "webhook-client"))
}

// WebhookManifests returns the files of deploy/webhook/ (dir) in the order
// `kubectl apply -f` takes them, for `kubectl apply -f -`, with two changes:
// the Secret ClientCASecret holding clientCA follows the Namespace, and the
// Deployment gets the shipped optional/client-auth-deployment-patch.yaml
// (two args and that Secret's ca.crt mounted).
func WebhookManifests(dir string, clientCA []byte) ([]byte, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	secret := map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": ClientCASecret, "namespace": "dynamo-system"},
		"data":     map[string]any{"ca.crt": base64.StdEncoding.EncodeToString(clientCA)},
	}
	var out [][]byte
	deployments := 0
	for _, path := range files { // Glob sorts, as kubectl does
		docs, err := manifestObjects(path)
		if err != nil {
			return nil, err
		}
		for _, obj := range docs {
			if obj.GetKind() == "Deployment" && obj.GetName() == "power-webhook" {
				if err := addClientCA(&obj, dir); err != nil {
					return nil, fmt.Errorf("%s: %w", path, err)
				}
				deployments++
			}
			objs := []map[string]any{obj.Object}
			if obj.GetKind() == "Namespace" {
				objs = append(objs, secret)
			}
			for _, o := range objs {
				y, err := yaml.Marshal(o)
				if err != nil {
					return nil, err
				}
				out = append(out, y)
			}
		}
	}
	if deployments != 1 {
		return nil, fmt.Errorf("%s: %d Deployments power-webhook, want 1", dir, deployments)
	}
	return bytes.Join(out, []byte("---\n")), nil
}

// addClientCA applies the shipped optional/client-auth-deployment-patch.yaml
// of dir to the Deployment, as `kubectl patch` does.
func addClientCA(obj *unstructured.Unstructured, dir string) error {
	patchYAML, err := os.ReadFile(filepath.Join(dir, "optional", "client-auth-deployment-patch.yaml"))
	if err != nil {
		return err
	}
	patch, err := yaml.YAMLToJSON(patchYAML)
	if err != nil {
		return fmt.Errorf("client-auth-deployment-patch.yaml: %w", err)
	}
	original, err := obj.MarshalJSON()
	if err != nil {
		return err
	}
	patched, err := strategicpatch.StrategicMergePatch(original, patch, appsv1.Deployment{})
	if err != nil {
		return fmt.Errorf("client-auth-deployment-patch.yaml: %w", err)
	}
	return obj.UnmarshalJSON(patched)
}
