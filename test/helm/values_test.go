package helm_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	sigsyaml "sigs.k8s.io/yaml"
)

// typed converts a rendered object to its Go type, refusing unknown fields.
func typed[T any](t testing.TB, u map[string]any) *T {
	t.Helper()
	data, err := json.Marshal(u)
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := sigsyaml.UnmarshalStrict(data, &v); err != nil {
		t.Fatalf("%T: %v", v, err)
	}
	return &v
}

func deployment(t testing.TB, objs []object) *appsv1.Deployment {
	t.Helper()
	return typed[appsv1.Deployment](t, get(t, objs, "Deployment", "power-webhook").Object)
}

func daemonSet(t testing.TB, objs []object) *appsv1.DaemonSet {
	t.Helper()
	return typed[appsv1.DaemonSet](t, get(t, objs, "DaemonSet", "power-agent").Object)
}

// podWebhookSelectors returns the namespaceSelector values of every webhook
// on pods, by webhook name, and the names of the others.
func podWebhookSelectors(t *testing.T, objs []object) (map[string][]string, []string) {
	t.Helper()
	pods := map[string][]string{}
	var others []string
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		hooks, _ := get(t, objs, kind, "power-webhook").Object["webhooks"].([]any)
		for _, h := range hooks {
			w := h.(map[string]any)
			name := w["name"].(string)
			onPods := false
			for _, r := range w["rules"].([]any) {
				for _, res := range r.(map[string]any)["resources"].([]any) {
					if s := res.(string); s == "pods" || strings.HasPrefix(s, "pods/") || s == "resourceclaims" {
						onPods = true
					}
				}
			}
			if !onPods {
				if _, ok := w["namespaceSelector"]; ok {
					t.Errorf("%s: a namespaceSelector on a webhook for cluster-scoped objects", name)
				}
				others = append(others, name)
				continue
			}
			sel, ok := w["namespaceSelector"].(map[string]any)
			if !ok {
				t.Errorf("%s: no namespaceSelector", name)
				continue
			}
			exprs := sel["matchExpressions"].([]any)
			if len(sel) != 1 || len(exprs) != 1 {
				t.Errorf("%s: namespaceSelector %v; want one expression", name, sel)
				continue
			}
			e := exprs[0].(map[string]any)
			if e["key"] != corev1.LabelMetadataName || e["operator"] != "NotIn" {
				t.Errorf("%s: namespaceSelector %v; want %s NotIn", name, sel, corev1.LabelMetadataName)
			}
			var values []string
			for _, v := range e["values"].([]any) {
				values = append(values, v.(string))
			}
			pods[name] = values
		}
	}
	return pods, others
}

// policySkippedNamespaces reads policy.SkippedNamespaces, the agent's
// default --webhook-skipped-namespaces, from pkg/policy's source: this
// module does not import the root module, so that the root's go.mod moves
// without it.
func policySkippedNamespaces(t testing.TB) []string {
	t.Helper()
	file := filepath.Join(root(t), "pkg", "policy", "keys.go")
	f, err := parser.ParseFile(token.NewFileSet(), file, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	found := false
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "SkippedNamespaces" || len(vs.Values) != 1 {
			return true
		}
		lit, ok := vs.Values[0].(*ast.CompositeLit)
		if !ok {
			t.Fatalf("%s: SkippedNamespaces is not a literal", file)
		}
		for _, e := range lit.Elts {
			b, ok := e.(*ast.BasicLit)
			if !ok || b.Kind != token.STRING {
				t.Fatalf("%s: SkippedNamespaces holds %T, not a string literal", file, e)
			}
			s, err := strconv.Unquote(b.Value)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		found = true
		return false
	})
	if !found || len(out) == 0 {
		t.Fatalf("no SkippedNamespaces in %s", file)
	}
	return out
}

// agentSkipped is the agent's --webhook-skipped-namespaces, as the agent
// reads it: the flag, or its default, policy.SkippedNamespaces.
func agentSkipped(t *testing.T, ds *appsv1.DaemonSet) []string {
	t.Helper()
	got := policySkippedNamespaces(t)
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--webhook-skipped-namespaces="); ok {
			got = strings.Split(v, ",")
		} else if strings.HasPrefix(a, "--webhook-skipped-namespaces") {
			t.Errorf("write %q as --webhook-skipped-namespaces=LIST", a)
		}
	}
	return got
}

// canonicalWatts is policy.ParseLimit's spelling of a limit.
var canonicalWatts = regexp.MustCompile(`^[1-9][0-9]{0,5}$`)

func hasArg(args []string, arg string) bool { return slices.Contains(args, arg) }

// TestSkippedNamespaces: one value (plus the release namespace) is what all
// four pod webhooks and the ResourceClaim one skip and what the agent treats
// as skipped; the budget webhook (cluster-scoped objects) has no
// namespaceSelector.
func TestSkippedNamespaces(t *testing.T) {
	for _, tc := range []struct {
		name, namespace, values string
		want                    []string
		flag                    bool // the DaemonSet sets --webhook-skipped-namespaces
	}{
		{"defaults", shippedNamespace, "", []string{"kube-system", "dynamo-system"}, false},
		{"listed", shippedNamespace, "skippedNamespaces: [kube-system, dynamo-system]", []string{"kube-system", "dynamo-system"}, false},
		{"more", shippedNamespace, "skippedNamespaces: [kube-system, gpu-operator, monitoring]", []string{"kube-system", "gpu-operator", "monitoring", "dynamo-system"}, true},
		{"another release namespace", "gpu-power", "", []string{"kube-system", "gpu-power"}, true},
		{"none but the release namespace", shippedNamespace, "skippedNamespaces: []", []string{"dynamo-system"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, values(t, tc.values), tc.namespace)
			pods, others := podWebhookSelectors(t, objs)
			if len(pods) != 5 || !slices.Equal(others, []string{"budget.validate.power.dynamo.nvidia.com"}) {
				t.Errorf("namespaced webhooks %v, others %v; want the 4 pod webhooks and the ResourceClaim one, and the budget webhook", pods, others)
			}
			for name, got := range pods {
				if !slices.Equal(got, tc.want) {
					t.Errorf("%s skips %v; want %v", name, got, tc.want)
				}
			}
			ds := daemonSet(t, objs)
			got := agentSkipped(t, ds)
			if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(tc.want))) {
				t.Errorf("the agent skips %v; the webhooks %v", got, tc.want)
			}
			flag := slices.ContainsFunc(ds.Spec.Template.Spec.Containers[0].Args, func(a string) bool {
				return strings.HasPrefix(a, "--webhook-skipped-namespaces")
			})
			if flag != tc.flag {
				t.Errorf("--webhook-skipped-namespaces set: %v; want %v (only where the agent's default differs)", flag, tc.flag)
			}
		})
	}
	renderErr(t, values(t, "skippedNamespaces: [Kube_System]"), "not a namespace name")
}

// TestAgentDefaultIsPolicy: the chart's idea of the agent's default skip
// list is policy.SkippedNamespaces, the agent's actual default.
func TestAgentDefaultIsPolicy(t *testing.T) {
	c := loadChart(t)
	c.Templates = append(c.Templates, &chartcommon.File{Name: "templates/zz-probe.txt", Data: []byte(`{{ include "gpu-power.agentDefaultSkippedNamespaces" . }}`)})
	files, err := renderFiles(c, nil, shippedNamespace)
	if err != nil {
		t.Fatal(err)
	}
	got := files["gpu-power/templates/zz-probe.txt"]
	if want := strings.Join(slices.Sorted(slices.Values(policySkippedNamespaces(t))), ","); got != want {
		t.Errorf("gpu-power.agentDefaultSkippedNamespaces is %q; policy.SkippedNamespaces (sorted) %q: change _helpers.tpl", got, want)
	}
}

// TestAnotherNamespace: installed elsewhere, every reference to the
// namespace follows: objects, service references, the certificate's names
// and cainjector's annotation.
func TestAnotherNamespace(t *testing.T) {
	objs := render(t, values(t, "namespace: {create: true}"), "gpu-power")
	for _, o := range objs {
		data, _ := json.Marshal(o.u.Object)
		if strings.Contains(string(data), "dynamo-system") {
			t.Errorf("%s still names dynamo-system: %s", o.key(), data)
		}
		if ns := o.u.GetNamespace(); ns != "" && ns != "gpu-power" {
			t.Errorf("%s in %s", o.key(), ns)
		}
	}
	if get(t, objs, "Namespace", "gpu-power") == nil {
		t.Error("no Namespace gpu-power")
	}
	serving := get(t, objs, "Certificate", "power-webhook-serving").Object["spec"].(map[string]any)
	if d := cmp.Diff([]any{"power-webhook.gpu-power.svc", "power-webhook.gpu-power.svc.cluster.local"}, serving["dnsNames"]); d != "" {
		t.Errorf("dnsNames: %s", d)
	}
	for _, kind := range []string{"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} {
		if a := get(t, objs, kind, "power-webhook").GetAnnotations()["cert-manager.io/inject-ca-from"]; a != "gpu-power/power-webhook-serving" {
			t.Errorf("%s: inject-ca-from %q", kind, a)
		}
	}
}

func TestImages(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	objs := render(t, values(t, fmt.Sprintf(`
webhook: {image: {repository: registry.example.com/gpu/power-webhook, tag: v0.1.0, digest: %q}, imagePullPolicy: IfNotPresent}
agent: {image: {repository: registry.example.com/gpu/power-agent, tag: v0.2.0}}
imagePullSecrets: [{name: regcred}]
`, digest)), shippedNamespace)
	dep, ds := deployment(t, objs), daemonSet(t, objs)
	if c := dep.Spec.Template.Spec.Containers[0]; c.Image != "registry.example.com/gpu/power-webhook@"+digest || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("webhook image %q (%s); want the digest, not the tag", c.Image, c.ImagePullPolicy)
	}
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/gpu/power-agent:v0.2.0" {
		t.Errorf("agent image %q", img)
	}
	for name, s := range map[string][]corev1.LocalObjectReference{"webhook": dep.Spec.Template.Spec.ImagePullSecrets, "agent": ds.Spec.Template.Spec.ImagePullSecrets} {
		if !slices.Equal(s, []corev1.LocalObjectReference{{Name: "regcred"}}) {
			t.Errorf("%s imagePullSecrets %v", name, s)
		}
	}
	// A digest alone is enough.
	objs = render(t, values(t, fmt.Sprintf(`agent: {image: {tag: "", digest: %q}}`, digest)), shippedNamespace)
	if img := daemonSet(t, objs).Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/dynamo-power/power-agent@"+digest {
		t.Errorf("agent image %q", img)
	}

	for _, comp := range []string{"webhook", "agent"} {
		t.Run(comp, func(t *testing.T) {
			renderErr(t, values(t, comp+": {image: {tag: latest}}"), comp+".image.tag: latest is refused")
			renderErr(t, values(t, comp+fmt.Sprintf(": {image: {tag: latest, digest: %q}}", digest)), "latest is refused")
			renderErr(t, values(t, comp+": {image: {tag: ''}}"), comp+".image: set tag")
			renderErr(t, values(t, comp+": {image: {tag: null}}"), comp+".image: set tag")
			renderErr(t, values(t, comp+": {image: {digest: 'sha256:abc'}}"), "want sha256:<64 hex digits>")
			renderErr(t, values(t, comp+": {image: {tag: 'v1:2'}}"), "is not an image tag")
			renderErr(t, values(t, comp+": {image: {repository: ''}}"), comp+".image.repository must be set")
		})
	}
}

// TestAgentGuards: as in Dynamo's power-agent chart, a grace period under
// 60 seconds or a rollout of more than one node at a time is refused.
func TestAgentGuards(t *testing.T) {
	for _, v := range []string{"59", "0", "-1", "'sixty'", "null"} {
		renderErr(t, values(t, "agent: {terminationGracePeriodSeconds: "+v+"}"), "agent.terminationGracePeriodSeconds")
	}
	for _, v := range []string{"2", "0", "'50%'", "'1%'", "null"} {
		renderErr(t, values(t, "agent: {maxUnavailable: "+v+"}"), "agent.maxUnavailable")
	}
	// --set passes integers, values files floats: both work.
	for _, vals := range []map[string]any{
		values(t, "agent: {terminationGracePeriodSeconds: 120, maxUnavailable: 1}"),
		{"agent": map[string]any{"terminationGracePeriodSeconds": int64(120), "maxUnavailable": int64(1)}},
		{"agent": map[string]any{"terminationGracePeriodSeconds": int64(120), "maxUnavailable": "1"}},
	} {
		ds := daemonSet(t, render(t, vals, shippedNamespace))
		if g := ds.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g != 120 {
			t.Errorf("%v: grace %v", vals, g)
		}
		if mu := ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable; mu == nil || mu.String() != "1" {
			t.Errorf("%v: maxUnavailable %v", vals, mu)
		}
	}
}

func TestAgentValues(t *testing.T) {
	objs := render(t, values(t, `
agent:
  restoreOnExit: true
  interval: 30s
  # Helm merges maps with the defaults: null drops a default key.
  nodeSelector: {nvidia.com/gpu.present: null, gpu-node: "yes"}
  tolerations: [{key: dedicated, operator: Equal, value: gpu, effect: NoExecute}]
  runtimeClassName: ""
  resources: {requests: {cpu: 50m, memory: 64Mi}, limits: null}
  extraArgs: [--debounce=1s]
`), shippedNamespace)
	spec := daemonSet(t, objs).Spec.Template.Spec
	args := spec.Containers[0].Args
	for _, a := range []string{"--restore-on-exit", "--interval=30s", "--debounce=1s", "--require-pod-resources", "--stamp-key-file=/etc/power-agent/stamp-key/tls.key"} {
		if !hasArg(args, a) {
			t.Errorf("agent args %v: no %s", args, a)
		}
	}
	if hasArg(args, "--interval=15s") {
		t.Errorf("agent args %v: the default interval too", args)
	}
	if d := cmp.Diff(map[string]string{"gpu-node": "yes"}, spec.NodeSelector); d != "" {
		t.Errorf("nodeSelector: %s", d)
	}
	if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != "dedicated" || spec.Tolerations[0].Effect != corev1.TaintEffectNoExecute {
		t.Errorf("tolerations %v", spec.Tolerations)
	}
	if spec.RuntimeClassName != nil {
		t.Errorf("runtimeClassName %q; want none", *spec.RuntimeClassName)
	}
	if r := spec.Containers[0].Resources; r.Requests.Cpu().String() != "50m" || len(r.Limits) != 0 {
		t.Errorf("resources %v", r)
	}
	// restoreOnExit off (the default): no flag.
	if hasArg(daemonSet(t, render(t, nil, shippedNamespace)).Spec.Template.Spec.Containers[0].Args, "--restore-on-exit") {
		t.Error("--restore-on-exit by default")
	}
}

func TestWebhookValues(t *testing.T) {
	objs := render(t, values(t, `
webhook:
  replicas: 5
  resources: {requests: {cpu: 200m, memory: 192Mi}, limits: {memory: 512Mi}}
  nodeSelector: {node-role.kubernetes.io/control-plane: ""}
  tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
  extraArgs: [--unknown-products=warn]
  defaultRules:
    - selector: nvidia.com/dynamo-component-type=worker
      watts: 300
    - selector: tier in (gold,silver)
      watts: 450
    - watts: 250
`), shippedNamespace)
	dep := deployment(t, objs)
	if *dep.Spec.Replicas != 5 {
		t.Errorf("replicas %d", *dep.Spec.Replicas)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Resources.Limits.Memory().String() != "512Mi" || c.Resources.Requests.Cpu().String() != "200m" {
		t.Errorf("resources %v", c.Resources)
	}
	if _, ok := dep.Spec.Template.Spec.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok || len(dep.Spec.Template.Spec.Tolerations) != 1 {
		t.Errorf("nodeSelector %v, tolerations %v", dep.Spec.Template.Spec.NodeSelector, dep.Spec.Template.Spec.Tolerations)
	}
	var rules []string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--default-rule="); ok {
			// As policy.ParseDefaultRule reads it: a label selector, '=', canonical watts.
			i := strings.LastIndexByte(v, '=')
			if _, err := labels.Parse(v[:i]); err != nil || !canonicalWatts.MatchString(v[i+1:]) {
				t.Errorf("%s: the webhook refuses it (%v)", a, err)
			}
			rules = append(rules, v)
		}
	}
	if want := []string{"nvidia.com/dynamo-component-type=worker=300", "tier in (gold,silver)=450", "=250"}; !slices.Equal(rules, want) {
		t.Errorf("default rules %v; want %v, in order", rules, want)
	}
	if !hasArg(c.Args, "--unknown-products=warn") {
		t.Errorf("args %v: no extra arg", c.Args)
	}
	for _, w := range []string{"0", "-5", "250.5", "1000000", "'250W'", "null"} {
		renderErr(t, values(t, "webhook: {defaultRules: [{selector: a=b, watts: "+w+"}]}"), "webhook.defaultRules[0]: watts")
	}
}

// TestCatalog: catalog additions become a ConfigMap the webhook reads with
// --catalog-file (the webhook accepts its CSV), mounted where the flag
// points, and a changed catalog rolls the replicas.
func TestCatalog(t *testing.T) {
	const catalog = `
webhook:
  catalog:
    - {product: NVIDIA-H200, minWatts: 200, defaultWatts: 700, maxWatts: 700}
    - {product: NVIDIA-A16, minWatts: 48.75, defaultWatts: "62.5", maxWatts: 62.5}
`
	objs := render(t, values(t, catalog), shippedNamespace)
	cm := typed[corev1.ConfigMap](t, get(t, objs, "ConfigMap", "power-webhook-catalog").Object)
	if cm.Namespace != shippedNamespace || len(cm.Data) != 1 {
		t.Fatalf("ConfigMap %s/%s data %v", cm.Namespace, cm.Name, cm.Data)
	}
	// The header policy.ParseCatalog wants, then one product a row.
	if want := "gpu_product,min_w,default_w,max_w\nNVIDIA-H200,200,700,700\nNVIDIA-A16,48.75,62.5,62.5\n"; cm.Data["catalog.csv"] != want {
		t.Errorf("catalog.csv\n%s\nwant\n%s", cm.Data["catalog.csv"], want)
	}
	dep := deployment(t, objs)
	spec := dep.Spec.Template.Spec
	var file string
	for _, a := range spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--catalog-file="); ok {
			file = v
		}
	}
	var mounted bool
	for _, m := range spec.Containers[0].VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Name && m.ReadOnly && file == m.MountPath+"/catalog.csv" {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("--catalog-file=%s is not catalog.csv of a read-only mount of ConfigMap %s: %v %v", file, cm.Name, spec.Containers[0].VolumeMounts, spec.Volumes)
	}
	sum := dep.Spec.Template.Annotations["checksum/catalog"]
	other := deployment(t, render(t, values(t, strings.Replace(catalog, "maxWatts: 700}", "maxWatts: 750}", 1)), shippedNamespace)).Spec.Template.Annotations["checksum/catalog"]
	if sum == "" || sum == other {
		t.Errorf("checksum/catalog %q, after a change %q: a new catalog must roll the pods", sum, other)
	}
	for _, bad := range []string{
		"{product: '', minWatts: 1, defaultWatts: 1, maxWatts: 1}",
		"{product: 'A,B', minWatts: 1, defaultWatts: 1, maxWatts: 1}",
		"{product: X, minWatts: 1.2345, defaultWatts: 2, maxWatts: 3}",
		"{product: X, minWatts: 1, defaultWatts: 300W, maxWatts: 3}",
		"{product: X, minWatts: 1, defaultWatts: 2}",
	} {
		renderErr(t, values(t, "webhook: {catalog: ["+bad+"]}"), "webhook.catalog[0]")
	}
}

// TestClientAuth: webhook.clientAuth.enabled renders
// deploy/webhook/optional/client-auth.yaml and the shipped Deployment as
// `kubectl patch --patch-file client-auth-deployment-patch.yaml` leaves it.
func TestClientAuth(t *testing.T) {
	objs := render(t, values(t, "webhook: {clientAuth: {enabled: true}}"), shippedNamespace)
	recipe := optional(t, "client-auth.yaml")
	var certs []object
	for _, o := range objs {
		if o.u.GetAPIVersion() == "cert-manager.io/v1" && strings.Contains(o.source, "client-auth") {
			certs = append(certs, o)
		}
	}
	compare(t, certs, recipe)

	patch, err := readJSON(t, root(t)+"/deploy/webhook/optional/client-auth-deployment-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := json.Marshal(get(t, shipped(t), "Deployment", "power-webhook").Object)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := strategicpatch.StrategicMergePatch(orig, patch, appsv1.Deployment{})
	if err != nil {
		t.Fatal(err)
	}
	var want map[string]any
	if err := json.Unmarshal(patched, &want); err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	data, _ := json.Marshal(get(t, objs, "Deployment", "power-webhook").Object)
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	// kubectl patch puts the new volume and mount first, the chart last: the
	// one thing compared regardless of order (both lists are keyed, by name
	// and mountPath).
	byKey := cmpopts.SortSlices(func(a, b any) bool { return fmt.Sprint(a) < fmt.Sprint(b) })
	if d := cmp.Diff(want, got, cmp.FilterPath(func(p cmp.Path) bool {
		last := fmt.Sprint(p.Last())
		return last == `["volumes"]` || last == `["volumeMounts"]`
	}, byKey)); d != "" {
		t.Errorf("the Deployment with clientAuth differs from the patched manifest (-patched +chart):\n%s", d)
	}
	// Off (the default): none of it.
	for _, o := range recipe {
		if has(render(t, nil, shippedNamespace), o.u.GetKind(), o.u.GetName()) {
			t.Errorf("%s rendered by default", o.key())
		}
	}
}

// TestClientAuthWithYourCA: webhook.clientAuth.caBundle renders the Secret
// the install guide has you create for another CA (ca.crt only) instead of
// cert-manager's objects, and leaves the Deployment as clientAuth does.
func TestClientAuthWithYourCA(t *testing.T) {
	const bundle = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIBATAKBggqhkjOPQQDAjAA\n-----END CERTIFICATE-----\n"
	vals := values(t, "webhook: {clientAuth: {enabled: true}}")
	vals["webhook"].(map[string]any)["clientAuth"].(map[string]any)["caBundle"] = bundle
	objs := render(t, vals, shippedNamespace)
	for _, o := range objs {
		if o.u.GetAPIVersion() == "cert-manager.io/v1" && strings.Contains(o.source, "client-auth") {
			t.Errorf("%s rendered with caBundle set", o.key())
		}
	}
	compare(t, only(objs, "Secret"), []object{{source: "docs/install.md", u: &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata": map[string]any{"name": "power-webhook-client-ca", "namespace": shippedNamespace},
		"data":     map[string]any{"ca.crt": base64.StdEncoding.EncodeToString([]byte(bundle))},
	}}}})
	withCertManager := render(t, values(t, "webhook: {clientAuth: {enabled: true}}"), shippedNamespace)
	if d := cmp.Diff(get(t, withCertManager, "Deployment", "power-webhook").Object, get(t, objs, "Deployment", "power-webhook").Object); d != "" {
		t.Errorf("the Deployment with caBundle differs from the one with cert-manager's CA (-cert-manager +caBundle):\n%s", d)
	}
	renderErr(t, values(t, "webhook: {clientAuth: {enabled: true, caBundle: not-a-certificate}}"), "webhook.clientAuth.caBundle")
	renderErr(t, values(t, "webhook: {clientAuth: {caBundle: '-----BEGIN CERTIFICATE-----'}}"), "webhook.clientAuth.enabled is false")
}

func readJSON(t testing.TB, path string) ([]byte, error) {
	t.Helper()
	objs := loadFiles(t, path)
	if len(objs) != 1 {
		return nil, fmt.Errorf("%s: %d documents", path, len(objs))
	}
	return json.Marshal(objs[0].u.Object)
}

// TestNetworkPolicy: webhook.networkPolicy renders
// deploy/webhook/optional/networkpolicy.yaml, and refuses to guess the API
// server's addresses.
func TestNetworkPolicy(t *testing.T) {
	objs := render(t, values(t, "webhook: {networkPolicy: {enabled: true, apiServerCIDRs: [10.0.0.0/24], metricsNamespace: monitoring}}"), shippedNamespace)
	compare(t, only(objs, "NetworkPolicy"), optional(t, "networkpolicy.yaml"))

	np := get(t, render(t, values(t, "webhook: {networkPolicy: {enabled: true, apiServerCIDRs: [10.0.0.0/24, 192.168.0.10/32], metricsNamespace: ''}}"), shippedNamespace), "NetworkPolicy", "power-webhook")
	ingress := np.Object["spec"].(map[string]any)["ingress"].([]any)
	if len(ingress) != 1 || len(ingress[0].(map[string]any)["from"].([]any)) != 3 {
		t.Errorf("ingress %v; want one rule for 9443 from two ranges and the replicas", ingress)
	}
	renderErr(t, values(t, "webhook: {networkPolicy: {enabled: true}}"), "webhook.networkPolicy.apiServerCIDRs")
	if len(only(render(t, nil, shippedNamespace), "NetworkPolicy")) != 0 {
		t.Error("a NetworkPolicy by default")
	}
}

// TestMonitoring: with its toggles on, the chart renders the monitoring
// bundle exactly as `kubectl apply -k deploy/monitoring/` creates it (the
// dashboard as kustomize's ConfigMap), from copies kept byte-identical; off,
// it renders none of it.
func TestMonitoring(t *testing.T) {
	for _, o := range render(t, nil, shippedNamespace) {
		if strings.HasPrefix(o.u.GetAPIVersion(), "monitoring.coreos.com/") || o.u.GetName() == "gpu-power-dashboard" {
			t.Errorf("%s rendered by default", o.key())
		}
	}
	bundle := filepath.Join(root(t), "deploy", "monitoring")
	for _, name := range []string{"podmonitors.yaml", "prometheusrule.yaml", "grafana-dashboard.json"} {
		a, err := os.ReadFile(filepath.Join(bundle, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(chartDir(t), "files", "monitoring", name))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("deploy/helm/gpu-power/files/monitoring/%s differs from deploy/monitoring/%s (%v): run make chart-files", name, name, err)
		}
	}
	dashboard, err := os.ReadFile(filepath.Join(bundle, "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := loadFiles(t, filepath.Join(bundle, "podmonitors.yaml"), filepath.Join(bundle, "prometheusrule.yaml"))
	want = append(want, object{source: "deploy/monitoring/kustomization.yaml", u: &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "gpu-power-dashboard", "namespace": shippedNamespace, "labels": map[string]any{"grafana_dashboard": "1"}},
		"data":     map[string]any{"grafana-dashboard.json": string(dashboard)},
	}}})
	on := values(t, "monitoring: {podMonitors: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}")
	var got []object
	for _, o := range render(t, on, shippedNamespace) {
		if strings.HasPrefix(o.u.GetAPIVersion(), "monitoring.coreos.com/") || o.u.GetName() == "gpu-power-dashboard" {
			got = append(got, o)
		}
	}
	compare(t, got, want)

	// Extra labels, for the Prometheus that selects by them, reach every
	// object; its own labels stay.
	labelled := values(t, "monitoring: {podMonitors: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}, labels: {release: prometheus}}")
	for _, o := range render(t, labelled, "gpu-power") {
		if !strings.HasPrefix(o.u.GetAPIVersion(), "monitoring.coreos.com/") && o.u.GetName() != "gpu-power-dashboard" {
			continue
		}
		if l := o.u.GetLabels(); l["release"] != "prometheus" || o.u.GetNamespace() != "gpu-power" {
			t.Errorf("%s: labels %v", o.key(), l)
		}
	}
}

// TestEverythingOnStillParses: every toggle at once renders objects the
// API types accept (strict: no unknown fields) for the workloads.
func TestEverythingOnStillParses(t *testing.T) {
	objs := render(t, allOn(t), "gpu-power")
	deployment(t, objs)
	daemonSet(t, objs)
}

func allOn(t testing.TB) map[string]any {
	return values(t, `
namespace: {create: true}
crds: {keep: true}
skippedNamespaces: [kube-system, gpu-operator]
imagePullSecrets: [{name: regcred}]
webhook:
  clientAuth: {enabled: true, clientNames: [kube-apiserver-power-webhook-client, b]}
  networkPolicy: {enabled: true, apiServerCIDRs: [10.0.0.0/24]}
  catalog: [{product: NVIDIA-H200, minWatts: 200, defaultWatts: 700, maxWatts: 700}]
  defaultRules: [{selector: role=decode, watts: 250}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]}}}
agent:
  restoreOnExit: true
  terminationGracePeriodSeconds: 90
monitoring: {podMonitors: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}, labels: {release: prometheus}}
`)
}

// TestClientNamesMatchTheIssuedCertificate: with cert-manager issuing the
// API server's client certificate, the names the webhook accepts must
// include the one it issues, or every GPU pod would be refused.
func TestClientNamesMatchTheIssuedCertificate(t *testing.T) {
	renderErr(t, values(t, "webhook: {clientAuth: {enabled: true, clientNames: [my-apiserver]}}"), "must include kube-apiserver-power-webhook-client")
	render(t, values(t, "webhook: {clientAuth: {enabled: true, clientNames: [kube-apiserver-power-webhook-client, my-apiserver]}}"), shippedNamespace)
}

// TestSchemaRefusesWhatTemplatesCannotSee: values.schema.json types what a
// template would misread: the string "false" is true to a template, a
// replica count of 0 or a number interval renders a broken object, and a
// tag YAML reads as a float (1.10) would lose its zero.
func TestSchemaRefusesWhatTemplatesCannotSee(t *testing.T) {
	for _, doc := range []string{
		`agent: {restoreOnExit: "false"}`,
		`webhook: {clientAuth: {enabled: "false"}}`,
		`namespace: {create: "false"}`,
		`webhook: {replicas: 0}`,
		`webhook: {replicas: 1.5}`,
		`agent: {interval: 15}`,
		`agent: {interval: soon}`,
		`agent: {image: {tag: 1.10}}`,
	} {
		renderErr(t, values(t, doc), "values don't meet the specifications of the schema")
	}
	render(t, values(t, `{agent: {interval: 1m30s, image: {tag: "1.10"}}, webhook: {replicas: 1}}`), shippedNamespace)
}
