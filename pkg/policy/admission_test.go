package policy_test

import (
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

const (
	h100 = "NVIDIA-H100-80GB-HBM3"
	l4   = "NVIDIA-L4"
	a2   = "NVIDIA-A2"
	// denial prefixes as the API server prints them after "Pod ... is invalid: "
	limitInvalid = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]: Invalid value: "
	stampInvalid = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit-validated]: Invalid value: "
)

func newAdmission(t *testing.T, defaults ...string) *policy.Admission {
	t.Helper()
	a := &policy.Admission{Catalog: policy.DefaultCatalog(), UnknownProducts: policy.UnknownProductsDeny}
	for _, s := range defaults {
		r, err := policy.ParseDefaultRule(s)
		if err != nil {
			t.Fatal(err)
		}
		a.Defaults = append(a.Defaults, r)
	}
	return a
}

func pod() *testpod.Wrapper { return testpod.MakePod("decode-0", "llm") }

func TestMutateCreate(t *testing.T) {
	h100Cluster := fakeCluster{"h100-0": h100, "h100-1": h100, "cpu-0": ""}
	mixed := fakeCluster{"h100-0": h100, "l4-0": l4}
	timeSliced := fakeCluster{"h100-0": h100, "ts-0": h100 + "-SHARED"}
	migSingle := fakeCluster{"h100-0": h100, "mig-0": h100 + "-MIG-1g.10gb"}
	tooMany := `spec.containers[*].resources.requests[nvidia.com/gpu]: Forbidden: the pod requests `
	tests := []struct {
		name       string
		cluster    fakeCluster
		defaults   []string
		timeSliced policy.TimeSlicedGPUs
		pod        *corev1.Pod
		errs       []string // exact denials
		warnings   []string // substrings, one per warning
		limit      string
		stamp      string
	}{
		{name: "GPU count past int64 when multiplied by watts", cluster: h100Cluster, pod: pod().Quantity(0, policy.ResourceGPU, "20e15").Limit("250").Obj(),
			errs: []string{tooMany + `20000000000000000 GPUs, more than the 256 a pod may request (no node holds that many); request at most 256`}},
		{name: "GPU count past int64 itself", cluster: h100Cluster, pod: pod().Quantity(0, policy.ResourceGPU, "1e30").Obj(),
			errs: []string{tooMany + `more than 9223372036854775806 GPUs, more than the 256 a pod may request (no node holds that many); request at most 256`}},
		{name: "containers that add up past the bound, without a limit", cluster: h100Cluster,
			pod:  pod().Quantity(0, policy.ResourceGPU, "9e18").Container("b", 0).Quantity(1, policy.ResourceGPU, "9e18").Obj(),
			errs: []string{tooMany + `more than 9223372036854775806 GPUs, more than the 256 a pod may request (no node holds that many); request at most 256`}},
		{name: "the bound itself is admitted", cluster: h100Cluster, pod: pod().GPU(256).Limit("250").Obj(), limit: "250", stamp: "250"},
		{name: "a negative count before validation counts as none", cluster: h100Cluster,
			pod:  pod().Quantity(0, policy.ResourceGPU, "-300").Container("b", 300).Limit("250").Obj(),
			errs: []string{tooMany + `300 GPUs, more than the 256 a pod may request (no node holds that many); request at most 256`}},
		{name: "time-sliced replicas renamed to nvidia.com/gpu.shared count as GPUs", cluster: h100Cluster,
			pod:  pod().Resource(0, policy.ResourceGPUShared, 2).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod requests nvidia.com/gpu.shared, and a power limit on a time-sliced board caps every pod that shares it; remove the annotation or pin the pod to GPUs that are not shared (the cluster operator can allow it with the webhook's --time-sliced-gpus=lowest-wins)`}},
		{name: "time-sliced boards in the cluster deny an unpinned limit", cluster: timeSliced, pod: pod().GPU(1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod can land on time-sliced GPUs (nvidia.com/gpu.product="NVIDIA-H100-80GB-HBM3-SHARED", from the cluster's GPU nodes), and a power limit on a time-sliced board caps every pod that shares it; remove the annotation or pin the pod to GPUs that are not shared (the cluster operator can allow it with the webhook's --time-sliced-gpus=lowest-wins)`}},
		{name: "pinned away from time-sliced boards", cluster: timeSliced, pod: pod().GPU(1).Product(h100).Limit("250").Obj(), limit: "250", stamp: "250"},
		{name: "time-sliced boards opened by the operator: lowest wins", cluster: timeSliced, timeSliced: policy.TimeSlicedGPUsLowestWins,
			pod: pod().GPU(1).Limit("250").Obj(), limit: "250", stamp: "250",
			warnings: []string{`every pod sharing the board is capped at the lowest limit among them`}},
		{name: "the opt-in does not open MIG boards", cluster: migSingle, timeSliced: policy.TimeSlicedGPUsLowestWins, pod: pod().GPU(1).NodeName("mig-0").Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod can land on MIG slices (nvidia.com/gpu.product="NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", from node "mig-0"), and a power limit applies to a whole board shared by every slice on it; remove the annotation or pin the pod to whole GPUs with a nodeSelector on nvidia.com/gpu.product`}},
		{name: "single MIG strategy: slices as nvidia.com/gpu, unpinned", cluster: migSingle, pod: pod().GPU(1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod can land on MIG slices (nvidia.com/gpu.product="NVIDIA-H100-80GB-HBM3-MIG-1g.10gb", from the cluster's GPU nodes), and a power limit applies to a whole board shared by every slice on it; remove the annotation or pin the pod to whole GPUs with a nodeSelector on nvidia.com/gpu.product`}},
		{name: "single MIG strategy without a limit passes", cluster: migSingle, pod: pod().GPU(1).Obj()},
		{name: "valid limit is stamped", cluster: h100Cluster, pod: pod().GPU(4).Limit("250").Obj(), limit: "250", stamp: "250"},
		{name: "bounds are inclusive: minimum", cluster: h100Cluster, pod: pod().GPU(1).Limit("200").Obj(), limit: "200", stamp: "200"},
		{name: "bounds are inclusive: maximum", cluster: h100Cluster, pod: pod().GPU(1).Limit("700").Obj(), limit: "700", stamp: "700"},
		{name: "above the maximum", cluster: h100Cluster, pod: pod().GPU(1).Limit("900").Obj(),
			errs: []string{limitInvalid + `"900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}},
		{name: "below the minimum", cluster: h100Cluster, pod: pod().GPU(1).Limit("150").Obj(),
			errs: []string{limitInvalid + `"150": below the 200 W minimum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}},
		{name: "syntax", cluster: h100Cluster, pod: pod().GPU(1).Limit("250W").Obj(),
			errs: []string{limitInvalid + `"250W": must be a positive whole number of watts per GPU written with digits only (no sign, unit, decimal point, separator or leading zero, at most 6 digits), for example "250"; write "250"`}},
		{name: "user-written stamp is replaced", cluster: h100Cluster, pod: pod().GPU(1).Limit("300").Stamp("700").Obj(), limit: "300", stamp: "300"},
		{name: "user-written stamp without a limit is removed", cluster: h100Cluster, pod: pod().GPU(1).Stamp("700").Obj()},
		{name: "pod without GPUs or limit is left alone", cluster: h100Cluster, pod: pod().Obj()},
		{name: "limit on a pod without GPUs: warning, and no stamp", cluster: h100Cluster, pod: pod().Limit("250").Obj(), limit: "250", stamp: "",
			warnings: []string{`dynamo.nvidia.com/gpu-power-limit: "250" has no effect: the pod requests no nvidia.com/gpu, so it is not stamped and no GPU is capped for it`}},
		{name: "MIG slices with a limit", cluster: h100Cluster, pod: pod().Resource(0, "nvidia.com/mig-1g.10gb", 1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod requests MIG slices (nvidia.com/mig-1g.10gb), and a power limit applies to a whole board shared by every slice on it; remove the annotation or request whole nvidia.com/gpu`}},
		{name: "MIG slices without a limit pass", cluster: h100Cluster, pod: pod().Resource(0, "nvidia.com/mig-1g.10gb", 1).Obj()},
		{name: "resource claims with a limit", cluster: h100Cluster, pod: pod().ResourceClaim("gpu", "one-gpu").Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": the pod gets devices through resourceClaims, and this cluster serves no resource.k8s.io/v1 to read them from; remove the annotation or request nvidia.com/gpu`}},
		{name: "pinned to a node", cluster: mixed, pod: pod().GPU(1).NodeName("l4-0").Limit("100").Obj(),
			errs: []string{limitInvalid + `"100": above the 72 W maximum of NVIDIA-L4; set 40 to 72 W`}},
		{name: "unpinned in a mixed cluster: intersection", cluster: mixed, pod: pod().GPU(1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": no limit is valid on every GPU the pod can land on (the cluster's GPU nodes): NVIDIA-H100-80GB-HBM3 allows 200-700 W, NVIDIA-L4 allows 40-72 W; pin the pod to one product with a nodeSelector on nvidia.com/gpu.product`}},
		{name: "pinned by nodeSelector in a mixed cluster", cluster: mixed, pod: pod().GPU(1).Product(h100).Limit("250").Obj(), limit: "250", stamp: "250"},
		{name: "overlapping products: the tighter bound names its product", cluster: mixed,
			pod:  pod().GPU(1).AffinityProducts("NVIDIA-H100-PCIe", "NVIDIA-H100-NVL").Limit("380").Obj(),
			errs: []string{limitInvalid + `"380": above the 350 W maximum of NVIDIA-H100-PCIe, the lowest maximum among the GPUs the pod can land on (NVIDIA-H100-NVL, NVIDIA-H100-PCIe); set 200 to 350 W`}},
		{name: "fractional bounds round inward", cluster: mixed, pod: pod().GPU(1).Product("NVIDIA-A16").Limit("63").Obj(),
			errs: []string{limitInvalid + `"63": above the 62 W maximum of NVIDIA-A16; set 49 to 62 W`}},
		{name: "unknown product", cluster: fakeCluster{"x-0": "ACME-X1"}, pod: pod().GPU(1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": no power range is known for GPU product "ACME-X1" (nvidia.com/gpu.product from the cluster's GPU nodes); pin the pod to a known product with a nodeSelector on nvidia.com/gpu.product, or ask the cluster operator to add the product to the power webhook's catalog`}},
		{name: "no GPU nodes at all", cluster: fakeCluster{"cpu-0": ""}, pod: pod().GPU(1).Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": no node in the cluster has a nvidia.com/gpu.product label, so there is no GPU to check the limit against; pin the pod to a known product with a nodeSelector on nvidia.com/gpu.product, or ask the cluster operator to add the product to the power webhook's catalog`}},
		{name: "bound to a node without a GPU label", cluster: h100Cluster, pod: pod().GPU(1).NodeName("cpu-0").Limit("250").Obj(),
			errs: []string{limitInvalid + `"250": node "cpu-0" has no nvidia.com/gpu.product label, or does not exist; pin the pod to a known product with a nodeSelector on nvidia.com/gpu.product, or ask the cluster operator to add the product to the power webhook's catalog`}},
		{name: "known and unknown candidates: checked against the known, warned about the rest", cluster: fakeCluster{"h100-0": h100, "x-0": "ACME-X1"},
			pod: pod().GPU(1).Limit("250").Obj(), limit: "250", stamp: "250",
			warnings: []string{`dynamo.nvidia.com/gpu-power-limit: "250" was not checked against "ACME-X1" (from the cluster's GPU nodes): no power range is known for it`}},
		{name: "default rule applies to a GPU pod", cluster: h100Cluster, defaults: []string{"role=decode=300"},
			pod: pod().GPU(2).Label("role", "decode").Obj(), limit: "300", stamp: "300"},
		{name: "default rule skips pods without GPUs", cluster: h100Cluster, defaults: []string{"=300"}, pod: pod().Obj()},
		{name: "default rule skips pods it does not select", cluster: h100Cluster, defaults: []string{"role=decode=300"}, pod: pod().GPU(1).Obj()},
		{name: "explicit limit beats the default", cluster: h100Cluster, defaults: []string{"=300"}, pod: pod().GPU(1).Limit("450").Obj(), limit: "450", stamp: "450"},
		{name: "default out of bounds names its rule", cluster: mixed, defaults: []string{"=300"}, pod: pod().GPU(1).Product(l4).Obj(),
			errs: []string{limitInvalid + `"300": set by default rule "=300": above the 72 W maximum of NVIDIA-L4; set 40 to 72 W; set the annotation on the pod or fix the rule`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAdmission(t, tt.defaults...)
			a.TimeSlicedGPUs = tt.timeSliced
			v := a.Mutate(admissionv1.Create, tt.pod, nil, tt.cluster, nil, policy.ClaimsDemand{})
			assertVerdict(t, v, tt.errs, tt.warnings)
			if len(tt.errs) == 0 && (v.Limit != tt.limit || v.Stamp != tt.stamp) {
				t.Errorf("limit %q stamp %q; want %q and %q", v.Limit, v.Stamp, tt.limit, tt.stamp)
			}
		})
	}
}

func TestUnknownProductsWarn(t *testing.T) {
	a := newAdmission(t)
	a.UnknownProducts = policy.UnknownProductsWarn
	v := a.Mutate(admissionv1.Create, pod().GPU(1).Limit("250").Obj(), nil, fakeCluster{"x-0": "ACME-X1"}, nil, policy.ClaimsDemand{})
	assertVerdict(t, v, nil, []string{`dynamo.nvidia.com/gpu-power-limit: "250" was not checked: no power range is known for GPU product "ACME-X1"`})
	if v.Stamp != "250" {
		t.Errorf("stamp = %q; want 250", v.Stamp)
	}
}

func TestMutateUpdate(t *testing.T) {
	cluster := fakeCluster{"h100-0": h100}
	running := func() *testpod.Wrapper { return pod().GPU(4).NodeName("h100-0") }
	tests := []struct {
		name         string
		old, pod     *corev1.Pod
		errs         []string
		limit, stamp string
	}{
		{"limit lowered: re-stamped", running().Limit("300").Stamp("300").Obj(), running().Limit("250").Stamp("300").Obj(), nil, "250", "250"},
		{"limit raised: re-stamped", running().Limit("300").Stamp("300").Obj(), running().Limit("650").Stamp("300").Obj(), nil, "650", "650"},
		{"limit raised out of bounds", running().Limit("300").Stamp("300").Obj(), running().Limit("800").Stamp("300").Obj(),
			[]string{limitInvalid + `"800": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}, "", ""},
		{"limit removed: stamp removed", running().Limit("300").Stamp("300").Obj(), running().Stamp("300").Obj(), nil, "", ""},
		{"limit added on update", running().Obj(), running().Limit("300").Obj(), nil, "300", "300"},
		{"other change keeps the stamp", running().Limit("300").Stamp("300").Obj(), running().Limit("300").Stamp("300").Label("x", "y").Obj(), nil, "300", "300"},
		{"stamp forged with the limit unchanged is put back", running().Limit("300").Stamp("300").Obj(), running().Limit("300").Stamp("700").Obj(), nil, "300", "300"},
		{"pod admitted before the webhook stays unstamped", running().Limit("300").Obj(), running().Limit("300").Label("x", "y").Obj(), nil, "300", ""},
		{"no defaults on update", running().Obj(), running().Label("role", "decode").Obj(), nil, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newAdmission(t, "=450").Mutate(admissionv1.Update, tt.pod, tt.old, cluster, nil, policy.ClaimsDemand{})
			assertVerdict(t, v, tt.errs, nil)
			if len(tt.errs) == 0 && (v.Limit != tt.limit || v.Stamp != tt.stamp) {
				t.Errorf("limit %q stamp %q; want %q and %q", v.Limit, v.Stamp, tt.limit, tt.stamp)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	cluster := fakeCluster{"h100-0": h100}
	running := func() *testpod.Wrapper { return pod().GPU(4).NodeName("h100-0") }
	tests := []struct {
		name     string
		op       admissionv1.Operation
		old, pod *corev1.Pod
		errs     []string
	}{
		{"stamped pod passes", admissionv1.Create, nil, pod().GPU(1).Limit("250").Stamp("250").Obj(), nil},
		{"pod without limit or stamp passes", admissionv1.Create, nil, pod().GPU(1).Obj(), nil},
		{"limit changed after mutation", admissionv1.Create, nil, pod().GPU(1).Limit("260").Stamp("250").Obj(),
			[]string{stampInvalid + `"250": must equal the admitted dynamo.nvidia.com/gpu-power-limit "260"; only the power webhook sets it (was the pod changed by another mutating webhook?)`}},
		{"missing stamp", admissionv1.Create, nil, pod().GPU(1).Limit("250").Obj(),
			[]string{stampInvalid + `"": must equal the admitted dynamo.nvidia.com/gpu-power-limit "250"; only the power webhook sets it (was the pod changed by another mutating webhook?)`}},
		{"stamp without limit", admissionv1.Create, nil, pod().GPU(1).Stamp("250").Obj(),
			[]string{stampInvalid + `"250": must be absent when dynamo.nvidia.com/gpu-power-limit is absent; only the power webhook sets it`}},
		{"final value out of bounds", admissionv1.Create, nil, pod().GPU(1).Limit("900").Stamp("900").Obj(),
			[]string{limitInvalid + `"900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`}},
		{"update keeping limit and stamp", admissionv1.Update, running().Limit("300").Stamp("300").Obj(), running().Limit("300").Stamp("300").Label("a", "b").Obj(), nil},
		{"update forging the stamp", admissionv1.Update, running().Limit("300").Stamp("300").Obj(), running().Limit("300").Stamp("700").Obj(),
			[]string{stampInvalid + `"700": must stay "300" while dynamo.nvidia.com/gpu-power-limit is unchanged; only the power webhook sets it`}},
		{"update stamping a pre-webhook pod", admissionv1.Update, running().Limit("300").Obj(), running().Limit("300").Stamp("300").Obj(),
			[]string{stampInvalid + `"300": must stay "" while dynamo.nvidia.com/gpu-power-limit is unchanged; only the power webhook sets it`}},
		{"update changing the limit, re-stamped", admissionv1.Update, running().Limit("300").Stamp("300").Obj(), running().Limit("250").Stamp("250").Obj(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newAdmission(t).Validate(tt.op, tt.pod, tt.old, cluster, policy.ClaimsDemand{})
			assertVerdict(t, v, tt.errs, nil)
		})
	}
}

func assertVerdict(t *testing.T, v policy.Verdict, errs, warnings []string) {
	t.Helper()
	var got []string
	for _, e := range v.Errors {
		got = append(got, e.Error())
	}
	if !slices.Equal(got, errs) {
		t.Errorf("denials\n got: %q\nwant: %q", got, errs)
	}
	if len(v.Warnings) != len(warnings) {
		t.Fatalf("warnings = %q; want %d matching %q", v.Warnings, len(warnings), warnings)
	}
	for i, w := range warnings {
		if !strings.Contains(v.Warnings[i], w) {
			t.Errorf("warning %d = %q; want it to contain %q", i, v.Warnings[i], w)
		}
	}
}
