// Package helm_test renders the Helm chart deploy/helm/gpu-power with the
// Helm SDK (helm.sh/helm/v4) and holds it to the plain manifests: with the
// default values, installed into dynamo-system, it renders exactly the
// objects of deploy/webhook/ and deploy/agent/daemonset.yaml (the Namespace
// aside, see TestDefaultsRenderTheManifests), so the chart and the manifests
// cannot drift. The optional pieces are held to deploy/webhook/optional/ the
// same way. Its own module (test/helm/go.mod): Helm's dependencies stay out
// of the binaries' module.
package helm_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	chartcommon "helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

const shippedNamespace = "dynamo-system"

// root is the repository root (this file is test/helm/render_test.go).
func root(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func chartDir(t testing.TB) string { return filepath.Join(root(t), "deploy", "helm", "gpu-power") }

func loadChart(t testing.TB) *chart.Chart {
	t.Helper()
	c, err := loader.Load(chartDir(t))
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

// object is one rendered or shipped YAML document.
type object struct {
	source string // template or file it came from
	u      *unstructured.Unstructured
}

func (o object) key() string {
	return fmt.Sprintf("%s %s %s/%s", o.u.GetAPIVersion(), o.u.GetKind(), o.u.GetNamespace(), o.u.GetName())
}

// parseDocs splits a multi-document YAML stream into objects, skipping
// documents that hold only comments.
func parseDocs(t testing.TB, source string, data []byte) []object {
	t.Helper()
	var out []object
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		u := &unstructured.Unstructured{}
		if err := sigsyaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("%s: %v\n%s", source, err, doc)
		}
		if len(u.Object) == 0 {
			continue
		}
		out = append(out, object{source: source, u: u})
	}
	return out
}

func loadFiles(t testing.TB, paths ...string) []object {
	t.Helper()
	var out []object
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root(t), p)
		out = append(out, parseDocs(t, rel, data)...)
	}
	return out
}

// shipped is what `kubectl apply -f deploy/webhook/` and
// `kubectl apply -f deploy/agent/daemonset.yaml` create, in that order.
func shipped(t testing.TB) []object {
	t.Helper()
	dir := filepath.Join(root(t), "deploy", "webhook")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() { // kubectl apply -f does not descend into optional/
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	files = append(files, filepath.Join(root(t), "deploy", "agent", "daemonset.yaml"))
	return loadFiles(t, files...)
}

func optional(t testing.TB, name string) []object {
	t.Helper()
	return loadFiles(t, filepath.Join(root(t), "deploy", "webhook", "optional", name))
}

// values reads user-supplied values as `helm install -f values.yaml` does.
func values(t testing.TB, doc string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := sigsyaml.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatalf("values %q: %v", doc, err)
	}
	return v
}

// renderFiles renders the chart as `helm install` and `helm template` do
// (values coalesced with the chart's, release options, default
// capabilities) and returns the rendered files, NOTES.txt and partials left
// out.
func renderFiles(c *chart.Chart, vals map[string]any, namespace string) (map[string]string, error) {
	opts := chartcommon.ReleaseOptions{Name: "gpu-power", Namespace: namespace, Revision: 1, IsInstall: true}
	top, err := chartutil.ToRenderValues(c, vals, opts, chartcommon.DefaultCapabilities)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(c, top)
	if err != nil {
		return nil, err
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") || strings.HasPrefix(filepath.Base(name), "_") {
			delete(files, name)
		}
	}
	return files, nil
}

// render renders the chart and returns its objects in Helm's install order
// (releaseutil.SortManifests with InstallOrder, as helm install applies them).
func render(t testing.TB, vals map[string]any, namespace string) []object {
	t.Helper()
	objs, err := tryRender(t, loadChart(t), vals, namespace)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return objs
}

func tryRender(t testing.TB, c *chart.Chart, vals map[string]any, namespace string) ([]object, error) {
	t.Helper()
	files, err := renderFiles(c, vals, namespace)
	if err != nil {
		return nil, err
	}
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, err
	}
	if len(hooks) != 0 {
		t.Errorf("the chart renders %d hooks; it has none", len(hooks))
	}
	var out []object
	for _, m := range manifests {
		out = append(out, parseDocs(t, m.Name, []byte(m.Content))...)
	}
	return out, nil
}

// renderErr renders into the shipped namespace and wants it refused with an
// error naming want.
func renderErr(t *testing.T, vals map[string]any, want string) {
	t.Helper()
	_, err := tryRender(t, loadChart(t), vals, shippedNamespace)
	if err == nil {
		t.Errorf("values %v rendered; want it refused (%q)", vals, want)
		return
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("values %v refused with %v; want an error naming %q", vals, err, want)
	}
}

// compare wants exactly the objects of want in got, each equal to the last
// field: nothing ignored, no label or annotation added.
func compare(t *testing.T, got, want []object) {
	t.Helper()
	index := func(objs []object) map[string]object {
		m := map[string]object{}
		for _, o := range objs {
			if prev, dup := m[o.key()]; dup {
				t.Errorf("%s twice: in %s and %s", o.key(), prev.source, o.source)
			}
			m[o.key()] = o
		}
		return m
	}
	g, w := index(got), index(want)
	for k, wo := range w {
		gotObj, ok := g[k]
		if !ok {
			t.Errorf("the chart does not render %s (%s)", k, wo.source)
			continue
		}
		if d := cmp.Diff(wo.u.Object, gotObj.u.Object); d != "" {
			t.Errorf("%s: the chart's (%s) differs from %s (-file +chart):\n%s", k, gotObj.source, wo.source, d)
		}
	}
	for k, o := range g {
		if _, ok := w[k]; !ok {
			t.Errorf("the chart renders %s (%s), which is not in the manifests", k, o.source)
		}
	}
}

func without(objs []object, kind string) []object {
	return slices.DeleteFunc(slices.Clone(objs), func(o object) bool { return o.u.GetKind() == kind })
}

func only(objs []object, kind string) []object {
	return slices.DeleteFunc(slices.Clone(objs), func(o object) bool { return o.u.GetKind() != kind })
}

func get(t testing.TB, objs []object, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.u.GetKind() == kind && o.u.GetName() == name {
			return o.u
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
	return nil
}

func has(objs []object, kind, name string) bool {
	for _, o := range objs {
		if o.u.GetKind() == kind && o.u.GetName() == name {
			return true
		}
	}
	return false
}

// TestDefaultsRenderTheManifests: the default values installed into
// dynamo-system render every object of deploy/webhook/ and
// deploy/agent/daemonset.yaml, field for field, except the Namespace: `helm
// install --create-namespace` creates the release namespace itself, and a
// chart that rendered it too would fail to install (it exists, not owned
// by the release) and delete the namespace with everything in it on
// uninstall. namespace.create=true renders it (for `helm template | kubectl
// apply -f -`), and then the rendering is the manifests exactly.
func TestDefaultsRenderTheManifests(t *testing.T) {
	files := shipped(t)
	if n := len(only(files, "Namespace")); n != 1 {
		t.Fatalf("the manifests hold %d Namespaces; want 1 (00-namespace.yaml)", n)
	}
	t.Run("defaults", func(t *testing.T) {
		compare(t, render(t, nil, shippedNamespace), without(files, "Namespace"))
	})
	t.Run("namespace.create", func(t *testing.T) {
		compare(t, render(t, values(t, "namespace: {create: true}"), shippedNamespace), files)
	})
}

// TestInstallOrder: helm install applies by kind (Helm's InstallOrder), not
// by file. The PriorityClass, ServiceAccounts, CRD and RBAC come before the
// workloads that use them, the webhook configurations after the Deployment
// they call, and cert-manager's kinds (unknown to Helm) last; cert-manager
// then issues the certificates and cainjector fills in the CA bundles, as
// after kubectl apply.
func TestInstallOrder(t *testing.T) {
	var got []string
	for _, o := range render(t, nil, shippedNamespace) {
		got = append(got, o.u.GetKind()+"/"+o.u.GetName())
	}
	want := []string{
		"PriorityClass/dynamo-power-critical",
		"PodDisruptionBudget/power-webhook",
		"ServiceAccount/power-agent-sa", "ServiceAccount/power-webhook-sa",
		"CustomResourceDefinition/gpupowerbudgets.power.dynamo.nvidia.com",
		"ClusterRole/power-agent-role", "ClusterRole/power-webhook-role",
		"ClusterRoleBinding/power-agent-binding", "ClusterRoleBinding/power-webhook-binding",
		"Role/power-webhook-leader-election", "RoleBinding/power-webhook-leader-election",
		"Service/power-webhook",
		"DaemonSet/power-agent",
		"Deployment/power-webhook",
		"MutatingWebhookConfiguration/power-webhook", "ValidatingWebhookConfiguration/power-webhook",
		"Certificate/power-webhook-ca", "Certificate/power-webhook-serving", "Certificate/power-stamp-key",
		"Issuer/power-webhook-selfsigned", "Issuer/power-webhook-ca",
	}
	if !slices.Equal(got, want) {
		t.Errorf("helm install applies\n %v\nwant\n %v", got, want)
	}
}

// TestUninstallDeletesTheDaemonSetFirst: helm uninstall deletes in Helm's
// UninstallOrder. As with `kubectl delete -f deploy/agent/daemonset.yaml`,
// the DaemonSet goes before the agent's ServiceAccount and RBAC, so that a
// stopping agent finds it gone and restores its GPUs; and the webhook
// configurations go first, so that no admission waits on a webhook being
// deleted.
func TestUninstallDeletesTheDaemonSetFirst(t *testing.T) {
	files, err := renderFiles(loadChart(t), nil, shippedNamespace)
	if err != nil {
		t.Fatal(err)
	}
	_, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.UninstallOrder)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range manifests {
		pos[m.Head.Kind+"/"+m.Head.Metadata.Name] = i
	}
	ds := pos["DaemonSet/power-agent"]
	for _, k := range []string{"ServiceAccount/power-agent-sa", "ClusterRole/power-agent-role", "ClusterRoleBinding/power-agent-binding"} {
		if pos[k] < ds {
			t.Errorf("helm uninstall deletes %s before DaemonSet/power-agent", k)
		}
	}
	for k, i := range pos {
		if !strings.HasSuffix(k, "WebhookConfiguration/power-webhook") && (i < pos["ValidatingWebhookConfiguration/power-webhook"] || i < pos["MutatingWebhookConfiguration/power-webhook"]) {
			t.Errorf("helm uninstall deletes %s before the webhook configurations", k)
		}
	}
}

// TestCRDFileIsTheGeneratedOne: the chart's copy of the CRD is byte for
// byte the generated deploy/webhook/10-crd-gpupowerbudgets.yaml (make
// manifests writes both).
func TestCRDFileIsTheGeneratedOne(t *testing.T) {
	a, err := os.ReadFile(filepath.Join(root(t), "deploy", "webhook", "10-crd-gpupowerbudgets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(chartDir(t), "files", "crd-gpupowerbudgets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("deploy/helm/gpu-power/files/crd-gpupowerbudgets.yaml differs from deploy/webhook/10-crd-gpupowerbudgets.yaml: run make manifests")
	}
}

func TestCRDValues(t *testing.T) {
	crd := get(t, render(t, values(t, "crds: {keep: true}"), shippedNamespace), "CustomResourceDefinition", "gpupowerbudgets.power.dynamo.nvidia.com")
	if crd.GetAnnotations()["helm.sh/resource-policy"] != "keep" {
		t.Errorf("crds.keep=true: annotations %v; want helm.sh/resource-policy: keep", crd.GetAnnotations())
	}
	if has(render(t, values(t, "crds: {enabled: false}"), shippedNamespace), "CustomResourceDefinition", "gpupowerbudgets.power.dynamo.nvidia.com") {
		t.Error("crds.enabled=false still renders the CRD")
	}
}

// TestChartVersion: the images' default tag is the chart's appVersion.
func TestChartVersion(t *testing.T) {
	c := loadChart(t)
	if c.Metadata.Name != "gpu-power" || c.Metadata.APIVersion != chart.APIVersionV2 {
		t.Errorf("chart %s, apiVersion %s", c.Metadata.Name, c.Metadata.APIVersion)
	}
	for _, comp := range []string{"webhook", "agent"} {
		img := c.Values[comp].(map[string]any)["image"].(map[string]any)
		if img["tag"] != c.Metadata.AppVersion {
			t.Errorf("%s.image.tag %v; want the chart's appVersion %s", comp, img["tag"], c.Metadata.AppVersion)
		}
	}
}
