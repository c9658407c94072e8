package webhook_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
)

const (
	mutateDenied = `admission webhook "mutate.power.dynamo.nvidia.com" denied the request: `
)

func pod(name string) *testpod.Wrapper { return testpod.MakePod(name, testNamespace) }

// create creates the pod and registers its deletion.
func create(t *testing.T, c client.Client, p *corev1.Pod) error {
	t.Helper()
	err := c.Create(t.Context(), p)
	if err == nil {
		t.Cleanup(func() { _ = k8s.Delete(t.Context(), p) })
	}
	return err
}

func annotations(t *testing.T, name string) map[string]string {
	t.Helper()
	return annotationsIn(t, testNamespace, name)
}

func annotationsIn(t *testing.T, namespace, name string) map[string]string {
	t.Helper()
	var p corev1.Pod
	if err := k8s.Get(t.Context(), types.NamespacedName{Namespace: namespace, Name: name}, &p); err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return p.Annotations
}

func powerAnnotations(a map[string]string) string {
	return fmt.Sprintf("limit=%q stamp=%q", a[policy.AnnotationPowerLimit], a[policy.AnnotationPowerLimitValidated])
}

func TestCreateIsDefaultedCheckedAndStamped(t *testing.T) {
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"valid limit is stamped", pod("valid").GPU(4).Product("NVIDIA-H100-80GB-HBM3").Limit("250").Obj(), `limit="250" stamp="250"`},
		{"forged stamp is replaced", pod("forged").GPU(1).NodeName("h100-1").Limit("300").Stamp("700").Obj(), `limit="300" stamp="300"`},
		{"stamp without a limit is removed", pod("stamp-only").GPU(1).Stamp("700").Obj(), `limit="" stamp=""`},
		{"default rule gives a decode worker its limit", pod("decode").GPU(2).AffinityProducts("NVIDIA-H100-80GB-HBM3", "NVIDIA-H200").Label("role", "decode").Obj(), `limit="300" stamp="300"`},
		{"GPU pod no rule selects stays unlimited", pod("prefill").GPU(2).Label("role", "prefill").Obj(), `limit="" stamp=""`},
		{"limit from a limits-only GPU request", pod("limits-only").GPULimitOnly(1).Product("NVIDIA-L4").Limit("60").Obj(), `limit="60" stamp="60"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := create(t, k8s, tt.pod); err != nil {
				t.Fatalf("create: %v", err)
			}
			if got := powerAnnotations(annotations(t, tt.pod.Name)); got != tt.want {
				t.Errorf("stored pod has %s; want %s", got, tt.want)
			}
		})
	}
}

func TestDenialsNameTheValueTheBoundAndTheFix(t *testing.T) {
	const field = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]"
	tests := []struct {
		name string
		pod  *corev1.Pod
		want string
	}{
		{"above the board maximum", pod("too-high").GPU(1).NodeName("h100-0").Limit("900").Obj(),
			`Pod "too-high" is invalid: ` + field + `: Invalid value: "900": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`},
		{"below the minimum of the pinned product", pod("too-low").GPU(1).Product("NVIDIA-H100-80GB-HBM3").Limit("150").Obj(),
			`Pod "too-low" is invalid: ` + field + `: Invalid value: "150": below the 200 W minimum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`},
		{"unpinned pod in a mixed cluster", pod("unpinned").GPU(1).Limit("250").Obj(),
			`Pod "unpinned" is invalid: ` + field + `: Invalid value: "250": no limit is valid on every GPU the pod can land on (the cluster's GPU nodes): NVIDIA-H100-80GB-HBM3 allows 200-700 W, NVIDIA-L4 allows 40-72 W; pin the pod to one product with a nodeSelector on nvidia.com/gpu.product`},
		{"not canonical", pod("unit").GPU(1).Product("NVIDIA-L4").Limit("60W").Obj(),
			`Pod "unit" is invalid: ` + field + `: Invalid value: "60W": must be a positive whole number of watts per GPU written with digits only (no sign, unit, decimal point, separator or leading zero, at most 6 digits), for example "250"; write "60"`},
		{"MIG slices", pod("mig").Resource(0, "nvidia.com/mig-1g.10gb", 1).Limit("250").Obj(),
			`Pod "mig" is invalid: ` + field + `: Invalid value: "250": the pod requests MIG slices (nvidia.com/mig-1g.10gb), and a power limit applies to a whole board shared by every slice on it; remove the annotation or request whole nvidia.com/gpu`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := create(t, k8s, tt.pod)
			if !apierrors.IsInvalid(err) {
				t.Fatalf("create: %v; want 422 Invalid", err)
			}
			if got := err.Error(); got != mutateDenied+tt.want {
				t.Errorf("denial\n got: %s\nwant: %s", got, mutateDenied+tt.want)
			}
			status := err.(apierrors.APIStatus).Status()
			if status.Details == nil || len(status.Details.Causes) != 1 || status.Details.Causes[0].Field != field {
				t.Errorf("causes %+v; want one on %s", status.Details, field)
			}
		})
	}
}

type warningRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.messages = append(w.messages, text)
}

func TestWarningsReachTheClient(t *testing.T) {
	rec := &warningRecorder{}
	cfg := rest.CopyConfig(restConfig)
	cfg.WarningHandler = rec
	c, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	if err := create(t, c, pod("no-gpu").Limit("250").Obj()); err != nil {
		t.Fatalf("create: %v", err)
	}
	want := `dynamo.nvidia.com/gpu-power-limit: "250" has no effect: the pod requests no nvidia.com/gpu, so it is not stamped and no GPU is capped for it`
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.messages) != 1 || rec.messages[0] != want {
		t.Errorf("warnings = %q; want [%q]", rec.messages, want)
	}
}

func TestUpdateRevalidatesAndRestamps(t *testing.T) {
	p := pod("planner-managed").GPU(4).NodeName("h100-0").Limit("300").Obj()
	if err := create(t, k8s, p); err != nil {
		t.Fatalf("create: %v", err)
	}
	patch := func(annotations string) error {
		return k8s.Patch(t.Context(), p, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":`+annotations+`}}`)))
	}
	steps := []struct {
		name, patch string
		denial      string
		want        string
	}{
		{"lowered", `{"dynamo.nvidia.com/gpu-power-limit":"250"}`, "", `limit="250" stamp="250"`},
		{"raised", `{"dynamo.nvidia.com/gpu-power-limit":"650"}`, "", `limit="650" stamp="650"`},
		{"raised above the board", `{"dynamo.nvidia.com/gpu-power-limit":"800"}`,
			mutateDenied + `Pod "planner-managed" is invalid: metadata.annotations[dynamo.nvidia.com/gpu-power-limit]: Invalid value: "800": above the 700 W maximum of NVIDIA-H100-80GB-HBM3; set 200 to 700 W`,
			`limit="650" stamp="650"`},
		{"stamp forged: put back", `{"dynamo.nvidia.com/gpu-power-limit-validated":"700"}`, "", `limit="650" stamp="650"`},
		{"unrelated annotation: untouched", `{"team":"inference"}`, "", `limit="650" stamp="650"`},
		{"limit removed: stamp removed", `{"dynamo.nvidia.com/gpu-power-limit":null}`, "", `limit="" stamp=""`},
		{"limit set again", `{"dynamo.nvidia.com/gpu-power-limit":"400"}`, "", `limit="400" stamp="400"`},
	}
	for _, s := range steps {
		err := patch(s.patch)
		switch {
		case s.denial == "" && err != nil:
			t.Fatalf("%s: %v", s.name, err)
		case s.denial != "" && (err == nil || err.Error() != s.denial):
			t.Fatalf("%s: error %v; want %s", s.name, err, s.denial)
		}
		if got := powerAnnotations(annotations(t, p.Name)); got != s.want {
			t.Fatalf("%s: stored pod has %s; want %s", s.name, got, s.want)
		}
	}
	if got := annotations(t, p.Name)["team"]; got != "inference" {
		t.Errorf("unrelated annotation lost: %q", got)
	}
}

func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	k, err := envtestenv.KubectlFor(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return k.Run(t.Context(), stdin, args...)
}

func manifest(t *testing.T, p *corev1.Pod) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestKubectlApplyAndServerDryRun(t *testing.T) {
	good := pod("kubectl-good").GPU(2).NodeName("l4-0").Limit("70").Obj()
	bad := pod("kubectl-bad").GPU(2).NodeName("l4-0").Limit("100").Obj()
	wantDenial := (`The Pod "kubectl-bad" is invalid: metadata.annotations[dynamo.nvidia.com/gpu-power-limit]: Invalid value: "100": above the 72 W maximum of NVIDIA-L4; set 40 to 72 W`)

	// Dry run: the same verdicts, nothing stored.
	out, err := kubectl(t, manifest(t, good), "apply", "--dry-run=server", "-o", "jsonpath={.metadata.annotations}", "-f", "-")
	if err != nil || !strings.Contains(out, `"dynamo.nvidia.com/gpu-power-limit-validated":"70"`) {
		t.Fatalf("dry-run of a valid pod: %v: %s", err, out)
	}
	out, err = kubectl(t, manifest(t, bad), "apply", "--dry-run=server", "-f", "-")
	if err == nil || !strings.Contains(out, wantDenial) {
		t.Fatalf("dry-run of an invalid pod: %v: %s\nwant it to contain: %s", err, out, wantDenial)
	}
	for _, name := range []string{good.Name, bad.Name} {
		if err := k8s.Get(t.Context(), types.NamespacedName{Namespace: testNamespace, Name: name}, &corev1.Pod{}); !apierrors.IsNotFound(err) {
			t.Errorf("dry run stored pod %s: %v", name, err)
		}
	}

	// For real.
	if out, err := kubectl(t, manifest(t, good), "apply", "-f", "-"); err != nil {
		t.Fatalf("apply: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = k8s.Delete(t.Context(), good) })
	if got := powerAnnotations(annotations(t, good.Name)); got != `limit="70" stamp="70"` {
		t.Errorf("applied pod has %s", got)
	}
	if out, err := kubectl(t, manifest(t, bad), "apply", "-f", "-"); err == nil || !strings.Contains(out, wantDenial) {
		t.Fatalf("apply of an invalid pod: %v: %s", err, out)
	}
	// kubectl annotate on the running pod, as a planner script would.
	if out, err := kubectl(t, "", "annotate", "--overwrite", "-n", testNamespace, "pod/"+good.Name, policy.AnnotationPowerLimit+"=50"); err != nil {
		t.Fatalf("annotate: %v: %s", err, out)
	}
	if got := powerAnnotations(annotations(t, good.Name)); got != `limit="50" stamp="50"` {
		t.Errorf("annotated pod has %s", got)
	}
}

// admissions sums the handler's decision counter over all labels.
func admissions(t *testing.T) float64 {
	t.Helper()
	var sum float64
	for _, reg := range webhooks.registries() {
		sum += counterSum(t, reg, "dynamo_power_webhook_admissions_total")
	}
	return sum
}

// counterSum sums a counter over all its labels.
func counterSum(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += counterValue(m)
		}
	}
	return sum
}

func counterValue(m *dto.Metric) float64 { return m.GetCounter().GetValue() }

func TestPodsWithoutGPUsOrLimitNeverReachTheWebhook(t *testing.T) {
	before := admissions(t)
	if err := create(t, k8s, pod("plain").Obj()); err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := create(t, k8s, pod("plain-annotated").Annotation("team", "a").Obj()); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := admissions(t) - before; got != 0 {
		t.Errorf("the webhook saw %v requests for pods without GPUs or power annotations; want 0", got)
	}
	// A GPU pod does reach both webhooks: the counter is live.
	if err := create(t, k8s, pod("gpu").GPU(1).Obj()); err != nil {
		t.Fatalf("create: %v", err)
	}
	if got := admissions(t) - before; got != 2 {
		t.Errorf("a GPU pod made %v admission calls; want 2 (mutate and validate)", got)
	}
}

func TestKubeSystemIsNeverIntercepted(t *testing.T) {
	before := admissions(t)
	p := testpod.MakePod("system-gpu", "kube-system").GPU(1).Limit("not-watts").Obj()
	if err := create(t, k8s, p); err != nil {
		t.Fatalf("create in kube-system: %v", err)
	}
	if p.Annotations[policy.AnnotationPowerLimitValidated] != "" {
		t.Errorf("kube-system pod was stamped: %v", p.Annotations)
	}
	if got := admissions(t) - before; got != 0 {
		t.Errorf("the webhook saw %v requests from kube-system; want 0", got)
	}
}
