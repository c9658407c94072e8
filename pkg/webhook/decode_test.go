package webhook

import (
	"encoding/json"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	sigsjson "sigs.k8s.io/json"

	"github.com/dynamo-power/gpu-power/internal/testpod"
)

func TestDecodePodReadsWhatPolicyNeeds(t *testing.T) {
	pods := []*corev1.Pod{
		testpod.MakePod("a", "ns").Obj(),
		testpod.MakePod("b", "ns").UID("0b6a4e2c-1111-4c8e-9a57-3f1f0c1d2e3f").GPU(8).Container("side", 0).Env(5).Label("role", "decode").Limit("250").Stamp("250").Obj(),
		testpod.MakePod("c", "ns").GPU(1).InitContainer("warm", 2).Sidecar("proxy", 1).Product("NVIDIA-L4").NodeName("n1").Obj(),
		testpod.MakePod("d", "ns").Resource(0, "nvidia.com/mig-1g.10gb", 2).Resource(0, "cpu", 4).AffinityProducts("NVIDIA-H200").ResourceClaim("gpu", "t").Obj(),
	}
	for _, want := range pods {
		raw, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodePod(raw)
		if err != nil {
			t.Fatalf("decode %s: %v", want.Name, err)
		}
		if !equality.Semantic.DeepEqual(got, testpod.PolicyView(want)) {
			t.Errorf("pod %s decoded as\n%+v\nwant\n%+v", want.Name, got, testpod.PolicyView(want))
		}
	}
}

func TestDecodePodRejectsMalformedJSON(t *testing.T) {
	for _, raw := range []string{``, `null`, `[]`, `{"metadata":7}`, `{"spec":{"containers":{}}}`, `{"spec":{"env":[}}`,
		`{"metadata":{}}garbage`, `{"spec":{"containers":[{"resources":{"limits":{"nvidia.com/gpu":"lots"}}}]}}`, `{"spec":{"containers":[{"resources":{"requests":{"deviceclass.resource.kubernetes.io/gpu.nvidia.com":"lots"}}}]}}`,
		`{"spec":{"containers":[{"resources":{"limits":{"deviceclass.resource.kubernetes.io/x":"1111111111111111111111111111111111111111111111111111111111111111111111"}}}]}}`, "{\"metadata\":{\"name\":\"\xff\"}}"} {
		if _, err := decodePod([]byte(raw)); err == nil {
			t.Errorf("decodePod(%q) accepted malformed input", raw)
		}
	}
}

func FuzzDecodePod(f *testing.F) {
	for _, p := range []*corev1.Pod{
		testpod.MakePod("b", "ns").GPU(8).Env(2).Label("role", "decode").Limit("250").Obj(),
		testpod.MakePod("c", "ns").GPU(1).InitContainer("warm", 2).Sidecar("proxy", 1).Product("NVIDIA-L4").Obj(),
	} {
		raw, _ := json.Marshal(p)
		f.Add(raw)
	}
	f.Add([]byte(`{"spec":{"containers":[{"resources":{"requests":{"nvidia.com/gpu":1}}}]}}`))
	// Escaped names are unquoted, not interned as written.
	f.Add([]byte(`{"sp\u0065c":{"containers":[{"resources":{"requests":{"nvidia.com\/gpu":2}}}]},"metadata":{"annotations":{"dynamo.nvidia.com/gpu-power-l\u0069mit":"300"}}}`))
	f.Add([]byte(`{"spec":{"containers":[{"resources":{"limits":{"deviceclass.resource.kubernetes.io/gpu.nvidia.com":"20e15"}}}],"resourceClaims":[{"name":"g","resourceClaimTemplateName":"t"}]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		pod, err := decodePod(raw)
		if err != nil {
			return
		}
		// Whatever decodes must agree with the API server's decoder, on the
		// I-JSON it sends (on a duplicate key decodePod keeps the last value whole,
		// where encoding/json merges maps).
		var full corev1.Pod
		if jsontext.Value(raw).IsValid() && sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &full) == nil && !equality.Semantic.DeepEqual(pod, testpod.PolicyView(&full)) {
			t.Fatalf("decodePod and encoding/json disagree on %q", raw)
		}
	})
}

// TestKeyOf: object names are unquoted as the API server's decoder reads
// them, and a known name written plainly costs no allocation.
func TestKeyOf(t *testing.T) {
	for raw, want := range map[string]string{
		`"spec"`: "spec", `"sp\u0065c"`: "spec", `"nvidia.com\/gpu"`: "nvidia.com/gpu",
		`"example.com/nic"`: "example.com/nic", `""`: "", `"\u00e9"`: "é",
	} {
		if got, err := keyOf(jsontext.Value(raw)); err != nil || got != want {
			t.Errorf("keyOf(%s) = %q, %v; want %q", raw, got, err, want)
		}
	}
	name := jsontext.Value(`"resourceClaims"`)
	if n := testing.AllocsPerRun(100, func() { _, _ = keyOf(name) }); n != 0 {
		t.Errorf("keyOf of a field name allocates %v times; want 0", n)
	}
}
