package realnode_test

import (
	"bytes"
	"os"
	"reflect"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// TestAgentManifestChangesOnlyTheFakeNVMLArg: the real node runs the shipped
// agent manifest with one change, the --fake-nvml argument (docs/cluster.md).
func TestAgentManifestChangesOnlyTheFakeNVMLArg(t *testing.T) {
	shipped, err := os.ReadFile(testdeploy.AgentFile())
	if err != nil {
		t.Fatal(err)
	}
	overlaid, err := realnode.AgentManifest(testdeploy.AgentFile())
	if err != nil {
		t.Fatal(err)
	}
	want, got := objects(t, shipped), objects(t, overlaid)
	if len(want) != len(got) {
		t.Fatalf("%d objects, want %d", len(got), len(want))
	}
	changed := 0
	for i := range got {
		if got[i].GetKind() == "DaemonSet" {
			containers, _, _ := unstructured.NestedSlice(got[i].Object, "spec", "template", "spec", "containers")
			c := containers[0].(map[string]any)
			args, _, _ := unstructured.NestedStringSlice(c, "args")
			if !slices.Contains(args, realnode.FakeNVMLArg) {
				t.Fatalf("the DaemonSet's agent lacks %s: %v", realnode.FakeNVMLArg, args)
			}
			_ = unstructured.SetNestedStringSlice(c, slices.DeleteFunc(args, func(a string) bool { return a == realnode.FakeNVMLArg }), "args")
			containers[0] = c
			_ = unstructured.SetNestedSlice(got[i].Object, containers, "spec", "template", "spec", "containers")
			changed++
		}
		if !reflect.DeepEqual(got[i].Object, want[i].Object) {
			t.Errorf("%s %s differs from the shipped one beyond %s", got[i].GetKind(), got[i].GetName(), realnode.FakeNVMLArg)
		}
	}
	if changed != 1 {
		t.Errorf("%d DaemonSets, want 1", changed)
	}
}

func objects(t *testing.T, data []byte) []unstructured.Unstructured {
	t.Helper()
	var out []unstructured.Unstructured
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			t.Fatal(err)
		}
		if len(obj.Object) > 0 {
			out = append(out, obj)
		}
	}
	return out
}
