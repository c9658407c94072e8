// Package testdeploy locates the shipped manifests for tests at every level:
// WebhookDir (deploy/webhook/), AgentFile (deploy/agent/daemonset.yaml) and
// ExampleBudget (the commented example GPUPowerBudget of deploy/webhook/).
package testdeploy

import (
	"os"
	"path/filepath"
	"strings"

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
