package manifests_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

func optionalFile(name string) string {
	return filepath.Join(testdeploy.WebhookDir(), "optional", name)
}

// TestOptionalFilesAreOnlyThese: deploy/webhook/optional/ holds what an
// operator applies by choice; a new file there gets a test here.
func TestOptionalFilesAreOnlyThese(t *testing.T) {
	entries, err := os.ReadDir(filepath.Join(testdeploy.WebhookDir(), "optional"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"client-auth-deployment-patch.yaml", "client-auth.yaml", "networkpolicy.yaml"}
	if !slices.Equal(names, want) {
		t.Errorf("deploy/webhook/optional/ holds %v, want %v", names, want)
	}
}

// TestNetworkPolicy: ingress to the webhook pods only on 9443, from the
// control plane's range and the other replicas (forwarded reservations),
// and on 8080 from one namespace; no rule for the probe port (the node may
// always reach its pods) and no egress isolation (the webhook must reach
// the API server).
func TestNetworkPolicy(t *testing.T) {
	objs := load(t, optionalFile("networkpolicy.yaml"))
	np := find[networkingv1.NetworkPolicy](t, objs, "NetworkPolicy", "power-webhook")
	if np.Namespace != "dynamo-system" || np.Spec.PodSelector.MatchLabels["app"] != "power-webhook" || len(np.Spec.PodSelector.MatchLabels) != 1 {
		t.Errorf("selects %v in %s; want app=power-webhook in dynamo-system", np.Spec.PodSelector, np.Namespace)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v; want Ingress only", np.Spec.PolicyTypes)
	}
	ports := map[int32]networkingv1.NetworkPolicyIngressRule{}
	for _, r := range np.Spec.Ingress {
		if len(r.Ports) != 1 || r.Ports[0].Port == nil || r.Ports[0].Port.Type != intstr.Int {
			t.Fatalf("rule %+v: want exactly one numbered port", r)
		}
		ports[r.Ports[0].Port.IntVal] = r
	}
	if len(ports) != 2 {
		t.Fatalf("rules for ports %v; want 9443 and 8080 only", ports)
	}
	webhook := ports[9443]
	if len(webhook.From) != 2 || webhook.From[0].IPBlock == nil || webhook.From[0].IPBlock.CIDR == "" ||
		webhook.From[1].PodSelector == nil || webhook.From[1].PodSelector.MatchLabels["app"] != "power-webhook" || webhook.From[1].NamespaceSelector != nil {
		t.Errorf("9443 from %+v; want the control plane's ipBlock and the replicas", webhook.From)
	}
	metrics := ports[8080]
	if len(metrics.From) != 1 || metrics.From[0].NamespaceSelector == nil || metrics.From[0].PodSelector != nil {
		t.Errorf("8080 from %+v; want one namespace", metrics.From)
	}
}

// TestClientAuthRecipe: cert-manager issues the API server a client
// certificate from a CA of its own (not the serving CA), and the Deployment
// patch mounts only that CA's certificate and keeps every shipped arg.
func TestClientAuthRecipe(t *testing.T) {
	objs := load(t, optionalFile("client-auth.yaml"))
	spec := func(kind, name string) map[string]any {
		for _, o := range objs {
			if o.u.GetKind() == kind && o.u.GetName() == name {
				return o.u.Object["spec"].(map[string]any)
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}
	ca := spec("Certificate", "power-webhook-client-ca")
	if ca["isCA"] != true || ca["secretName"] != "power-webhook-client-ca" {
		t.Errorf("client CA: %v", ca)
	}
	if spec("Issuer", "power-webhook-client-ca")["ca"].(map[string]any)["secretName"] != "power-webhook-client-ca" {
		t.Error("the client CA Issuer must sign with the client CA's Secret")
	}
	client := spec("Certificate", "kube-apiserver-power-webhook-client")
	if client["commonName"] != "kube-apiserver-power-webhook-client" || client["issuerRef"].(map[string]any)["name"] != "power-webhook-client-ca" ||
		!slices.Contains(client["usages"].([]any), any("client auth")) || client["isCA"] == true {
		t.Errorf("the API server's client certificate: %v", client)
	}

	data, err := os.ReadFile(optionalFile("client-auth-deployment-patch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var patch appsv1.Deployment
	if err := sigsyaml.UnmarshalStrict(data, &patch); err != nil {
		t.Fatal(err)
	}
	shipped := find[appsv1.Deployment](t, load(t, webhookFiles(t)...), "Deployment", "power-webhook")
	c, s := patch.Spec.Template.Spec.Containers[0], shipped.Spec.Template.Spec.Containers[0]
	want := append(slices.Clone(s.Args), "--client-ca-file=/etc/power-webhook/client-ca/ca.crt", "--client-name=kube-apiserver-power-webhook-client")
	if c.Name != s.Name || !slices.Equal(c.Args, want) {
		t.Errorf("patched args %v; want the shipped ones, then the client CA's: %v", c.Args, want)
	}
	v := patch.Spec.Template.Spec.Volumes
	if len(v) != 1 || v[0].Secret == nil || v[0].Secret.SecretName != "power-webhook-client-ca" || len(v[0].Secret.Items) != 1 || v[0].Secret.Items[0].Key != "ca.crt" {
		t.Errorf("volumes %+v; want only ca.crt of power-webhook-client-ca (never its key)", v)
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].Name != v[0].Name || !c.VolumeMounts[0].ReadOnly || c.VolumeMounts[0].MountPath != "/etc/power-webhook/client-ca" {
		t.Errorf("volume mounts %+v", c.VolumeMounts)
	}
}
