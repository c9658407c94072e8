// Package testdeploy locates the shipped manifests for tests at every level:
// WebhookDir (deploy/webhook/), AgentFile (deploy/agent/daemonset.yaml),
// ExampleBudget (the commented example GPUPowerBudget of deploy/webhook/) and
// WebhookResourceEnv (the environment the webhook's Deployment derives from
// its container's resources, for a test that runs the binary as a process).
package testdeploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
)

// WebhookDir is deploy/webhook/, applied with `kubectl apply -f`.
func WebhookDir() string { return filepath.Join(envtestenv.Root(), "deploy", "webhook") }

// AgentFile is deploy/agent/daemonset.yaml.
func AgentFile() string { return filepath.Join(envtestenv.Root(), "deploy", "agent", "daemonset.yaml") }

// ExampleBudget returns the commented example budget of deploy/webhook/ as
// YAML: the lines after the first bare "#" line, without their "# ".
func ExampleBudget() ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(WebhookDir(), "90-example-budget.yaml"))
	if err != nil {
		return nil, err
	}
	var out []string
	body := false
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case line == "#":
			body = true
		case body && strings.HasPrefix(line, "# "):
			out = append(out, line[2:])
		}
	}
	return []byte(strings.Join(out, "\n") + "\n"), nil
}

// WebhookResourceEnv is the environment the webhook Deployment's container
// gets from its own resources (resourceFieldRef), resolved as the kubelet
// does: the quantity over the divisor, rounded up. A test that runs the
// webhook as a process runs it as the Deployment would (GOMAXPROCS from
// requests.cpu); other sources (fieldRef, plain values) are the test's own.
func WebhookResourceEnv() ([]string, error) {
	path := filepath.Join(WebhookDir(), "30-deployment.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var d appsv1.Deployment
		if err := dec.Decode(&d); err != nil {
			return nil, fmt.Errorf("%s: no Deployment power-webhook: %w", path, err)
		}
		if d.Kind != "Deployment" || d.Name != "power-webhook" {
			continue
		}
		var env []string
		for _, c := range d.Spec.Template.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil {
					continue
				}
				v, err := resourceValue(c, e.ValueFrom.ResourceFieldRef)
				if err != nil {
					return nil, fmt.Errorf("%s: env %s: %w", path, e.Name, err)
				}
				env = append(env, e.Name+"="+v)
			}
		}
		return env, nil
	}
}

func resourceValue(c corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	list, name, ok := strings.Cut(ref.Resource, ".")
	q, found := map[string]corev1.ResourceList{"requests": c.Resources.Requests, "limits": c.Resources.Limits}[list][corev1.ResourceName(name)]
	if !ok || !found {
		return "", fmt.Errorf("resource %q: not set on container %s", ref.Resource, c.Name)
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	m, dm := q.MilliValue(), divisor.MilliValue()
	return strconv.FormatInt((m+dm-1)/dm, 10), nil
}
