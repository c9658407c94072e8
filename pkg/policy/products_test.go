package policy_test

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// fakeCluster is a cluster of nodes and their product labels.
type fakeCluster map[string]string

func (c fakeCluster) NodeGPUProduct(node string) (string, bool) {
	p, ok := c[node]
	return p, ok
}

// DRAProducts implements policy.Cluster: no DRA devices (draCluster has some).
func (c fakeCluster) DRAProducts(corev1.ResourceName, string) []string { return nil }

func (c fakeCluster) GPUProducts() []string {
	var out []string
	for _, p := range c {
		if p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func TestNormalizeProduct(t *testing.T) {
	tests := []struct{ label, want string }{
		{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3"},
		{"NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-H100-80GB-HBM3"},
		{"NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "NVIDIA-A100-SXM4-40GB"},
		{"NVIDIA-A100-SXM4-40GB-MIG-1g.5gb-SHARED", "NVIDIA-A100-SXM4-40GB"},
		{"NVIDIA-H100-80GB-HBM3-MIG-3g.40gb", "NVIDIA-H100-80GB-HBM3"},
		{"Tesla-T4", "Tesla-T4"},
		{"", ""},
		{"-MIG-", "-MIG-"},
	}
	for _, tt := range tests {
		if got := policy.NormalizeProduct(tt.label); got != tt.want {
			t.Errorf("NormalizeProduct(%q) = %q; want %q", tt.label, got, tt.want)
		}
	}
}

func FuzzNormalizeProduct(f *testing.F) {
	for _, s := range []string{"NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "-MIG-", "-SHARED", "", "\xff-MIG-x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, label string) {
		got := policy.NormalizeProduct(label)
		if !strings.HasPrefix(label, got) {
			t.Fatalf("NormalizeProduct(%q) = %q is not a prefix of the label", label, got)
		}
		if i := strings.Index(got, "-MIG-"); i > 0 {
			t.Fatalf("NormalizeProduct(%q) = %q still has a MIG profile", label, got)
		}
	})
}

func TestCandidatesOf(t *testing.T) {
	cluster := fakeCluster{
		"h100-0": "NVIDIA-H100-80GB-HBM3",
		"h100-1": "NVIDIA-H100-80GB-HBM3-SHARED",
		"l4-0":   "NVIDIA-L4",
		"cpu-0":  "",
	}
	notIn := corev1.NodeSelectorRequirement{Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpNotIn, Values: []string{"NVIDIA-L4"}}
	zone := corev1.NodeSelectorRequirement{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}
	inH100 := corev1.NodeSelectorRequirement{Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: []string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"}}
	inH200 := corev1.NodeSelectorRequirement{Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: []string{"NVIDIA-H200", "NVIDIA-B200"}}
	tests := []struct {
		name   string
		pod    *corev1.Pod
		labels []string
		from   string
	}{
		{"unpinned pod can land on any GPU product", testpod.MakePod("p", "ns").Obj(),
			[]string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-L4"}, "the cluster's GPU nodes"},
		{"bound pod has its node's product", testpod.MakePod("p", "ns").NodeName("l4-0").Obj(), []string{"NVIDIA-L4"}, `node "l4-0"`},
		{"bound pod on a node without the label", testpod.MakePod("p", "ns").NodeName("cpu-0").Obj(), nil, `node "cpu-0"`},
		{"bound pod on a missing node", testpod.MakePod("p", "ns").NodeName("gone").Obj(), nil, `node "gone"`},
		{"node name beats selectors", testpod.MakePod("p", "ns").NodeName("l4-0").Product("NVIDIA-H200").Obj(), []string{"NVIDIA-L4"}, `node "l4-0"`},
		{"nodeSelector", testpod.MakePod("p", "ns").Product("NVIDIA-H200").Obj(), []string{"NVIDIA-H200"}, "nodeSelector"},
		{"affinity In", testpod.MakePod("p", "ns").AffinityProducts("NVIDIA-L4", "NVIDIA-A10").Obj(), []string{"NVIDIA-A10", "NVIDIA-L4"}, "required node affinity"},
		{"affinity terms are ORed", testpod.MakePod("p", "ns").AffinityProducts("NVIDIA-L4").AffinityProducts("NVIDIA-A10").Obj(),
			[]string{"NVIDIA-A10", "NVIDIA-L4"}, "required node affinity"},
		{"In expressions in one term are ANDed", testpod.MakePod("p", "ns").AffinityTerm(inH100, inH200, zone).Obj(), []string{"NVIDIA-H200"}, "required node affinity"},
		{"a term without the product leaves it open", testpod.MakePod("p", "ns").AffinityProducts("NVIDIA-L4").AffinityTerm(zone).Obj(),
			[]string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-L4"}, "the cluster's GPU nodes"},
		{"NotIn does not pin", testpod.MakePod("p", "ns").AffinityTerm(notIn).Obj(),
			[]string{"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-80GB-HBM3-SHARED", "NVIDIA-L4"}, "the cluster's GPU nodes"},
		{"nodeSelector and affinity intersect", testpod.MakePod("p", "ns").Product("NVIDIA-H200").AffinityTerm(inH100).Obj(),
			[]string{"NVIDIA-H200"}, "nodeSelector and required node affinity"},
		{"nodeSelector and affinity that exclude each other", testpod.MakePod("p", "ns").Product("NVIDIA-L4").AffinityTerm(inH100).Obj(),
			[]string{}, "nodeSelector and required node affinity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := policy.CandidatesOf(tt.pod, cluster)
			if !slices.Equal(got.Labels, tt.labels) || got.From != tt.from {
				t.Errorf("CandidatesOf = %q from %q; want %q from %q", got.Labels, got.From, tt.labels, tt.from)
			}
		})
	}
}
