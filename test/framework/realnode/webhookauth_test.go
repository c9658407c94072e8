package realnode_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// TestWebhookManifestsAddOnlyTheClientCA: the real node runs deploy/webhook/
// with exactly these changes (docs/cluster.md): a Secret with the API
// server's client CA after the Namespace, and the shipped
// optional/client-auth-deployment-patch.yaml on the Deployment: two args
// after the shipped ones and that Secret's ca.crt mounted. Everything else is as shipped, in the order
// `kubectl apply -f deploy/webhook/` takes it.
func TestWebhookManifestsAddOnlyTheClientCA(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	out, err := realnode.WebhookManifests(testdeploy.WebhookDir(), ca)
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(testdeploy.WebhookDir(), "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, objects(t, data)...)
	}
	got := objects(t, out)
	if len(got) != len(want)+1 {
		t.Fatalf("%d objects, want the %d shipped and one Secret", len(got), len(want))
	}
	if got[0].GetKind() != "Namespace" {
		t.Fatalf("first object %s, want the Namespace", got[0].GetKind())
	}
	secret := got[1]
	wantSecret := map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": "power-webhook-client-ca", "namespace": "dynamo-system"},
		"data":     map[string]any{"ca.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="},
	}
	if !reflect.DeepEqual(secret.Object, wantSecret) {
		t.Errorf("second object %v, want %v", secret.Object, wantSecret)
	}
	got = append(got[:1], got[2:]...)
	deployments := 0
	for i := range got {
		if got[i].GetKind() == "Deployment" {
			undoClientCA(t, &got[i])
			deployments++
		}
		if !reflect.DeepEqual(got[i].Object, want[i].Object) {
			t.Errorf("%s %s differs from the shipped one beyond the client CA", got[i].GetKind(), got[i].GetName())
		}
	}
	if deployments != 1 {
		t.Errorf("%d Deployments, want 1", deployments)
	}
}

// undoClientCA checks the Deployment's additions, exactly, and removes them:
// args after the shipped ones, a volume mount and a volume (where strategic
// merge puts them).
func undoClientCA(t *testing.T, d *unstructured.Unstructured) {
	t.Helper()
	spec := []string{"spec", "template", "spec"}
	containers, _, _ := unstructured.NestedSlice(d.Object, append(spec, "containers")...)
	c := containers[0].(map[string]any)
	args, _, _ := unstructured.NestedStringSlice(c, "args")
	added := []string{"--client-ca-file=/etc/power-webhook/client-ca/ca.crt", "--client-name=kube-apiserver-power-webhook-client"}
	if len(args) < 2 || !slices.Equal(args[len(args)-2:], added) {
		t.Fatalf("the webhook container's args %v, want them to end in %v", args, added)
	}
	_ = unstructured.SetNestedStringSlice(c, args[:len(args)-2], "args")
	remove := func(obj map[string]any, field []string, want map[string]any) {
		t.Helper()
		l, _, _ := unstructured.NestedSlice(obj, field...)
		i := slices.IndexFunc(l, func(x any) bool { return reflect.DeepEqual(x, want) })
		if i < 0 {
			t.Fatalf("%v has no %v: %v", field, want, l)
		}
		_ = unstructured.SetNestedSlice(obj, slices.Delete(l, i, i+1), field...)
	}
	remove(c, []string{"volumeMounts"}, map[string]any{"name": "client-ca", "mountPath": "/etc/power-webhook/client-ca", "readOnly": true})
	containers[0] = c
	_ = unstructured.SetNestedSlice(d.Object, containers, append(spec, "containers")...)
	remove(d.Object, append(spec, "volumes"), map[string]any{"name": "client-ca", "secret": map[string]any{"secretName": "power-webhook-client-ca",
		"items": []any{map[string]any{"key": "ca.crt", "path": "ca.crt"}}}})
}
