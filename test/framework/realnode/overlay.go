package realnode

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// FakeNVMLArg is the one change the real node makes to the shipped agent
// DaemonSet: the GPUs are simulated, so the agent reads the fake NVML's
// state file (in its own hostPath state folder) instead of loading
// libnvidia-ml. Everything else (images, pull policy, network, RBAC,
// hostPID, privileged, mounts, probes) runs as shipped: the images carry the
// shipped references, pods reach the API server at the address the kubelet
// gives them, and the RuntimeClass nvidia is created with handler runc.
const FakeNVMLArg = "--fake-nvml=" + FakeNVMLFile

// AgentManifest returns deploy/agent/daemonset.yaml with FakeNVMLArg added
// to the agent container's args, for `kubectl apply -f -`.
func AgentManifest(path string) ([]byte, error) {
	objs, err := manifestObjects(path)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	found := false
	for _, obj := range objs {
		if obj.GetKind() == "DaemonSet" {
			containers, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
			for i, c := range containers {
				m := c.(map[string]any)
				if m["name"] != "agent" {
					continue
				}
				args, _, _ := unstructured.NestedStringSlice(m, "args")
				if err := unstructured.SetNestedStringSlice(m, append(args, FakeNVMLArg), "args"); err != nil {
					return nil, err
				}
				containers[i] = m
				found = true
			}
			if err := unstructured.SetNestedSlice(obj.Object, containers, "spec", "template", "spec", "containers"); err != nil {
				return nil, err
			}
		}
		y, err := yaml.Marshal(obj.Object)
		if err != nil {
			return nil, err
		}
		out = append(out, y)
	}
	if !found {
		return nil, fmt.Errorf("%s has no DaemonSet with a container named agent", path)
	}
	return bytes.Join(out, []byte("---\n")), nil
}

// manifestObjects reads the objects of a multi-document manifest, skipping
// documents that hold only comments.
func manifestObjects(path string) ([]unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []unstructured.Unstructured
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		if strings.TrimSpace(stripComments(string(doc))) == "" {
			continue
		}
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
