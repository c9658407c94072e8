package realnode_test

import (
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/realnode"
)

// TestHelmValuesAreTheOverlaysChanges: the chart values the real node
// installs with set the client CA (webhook.clientAuth) and the agent's
// --fake-nvml, the changes WebhookManifests and AgentManifest make, and
// nothing else (docs/cluster.md).
func TestHelmValuesAreTheOverlaysChanges(t *testing.T) {
	ca := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	data, err := realnode.HelmValues([]byte(ca))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := yaml.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"webhook": map[string]any{"clientAuth": map[string]any{"enabled": true, "caBundle": ca}},
		"agent":   map[string]any{"extraArgs": []any{realnode.FakeNVMLArg}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("values:\n%s\nwant %v", data, want)
	}
}
