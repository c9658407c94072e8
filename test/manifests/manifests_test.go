// Package manifests_test pins what the shipped manifests promise: names,
// selectors, webhook behaviour, least-privilege RBAC and security settings.
// Widening RBAC or dropping a security setting fails here on purpose.
package manifests_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	sigsyaml "sigs.k8s.io/yaml"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// object is one YAML document of a manifest file.
type object struct {
	file string
	raw  []byte
	u    *unstructured.Unstructured
}

func load(t *testing.T, paths ...string) []object {
	t.Helper()
	var out []object
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := dec.Read()
			if err != nil {
				break
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := sigsyaml.Unmarshal(doc, &u.Object); err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			if len(u.Object) == 0 {
				continue
			}
			out = append(out, object{file: filepath.Base(p), raw: doc, u: u})
		}
	}
	return out
}

func find[T any](t *testing.T, objs []object, kind, name string) *T {
	t.Helper()
	for _, o := range objs {
		if o.u.GetKind() == kind && o.u.GetName() == name {
			var v T
			if err := sigsyaml.UnmarshalStrict(o.raw, &v); err != nil {
				t.Fatalf("%s %s in %s: %v", kind, name, o.file, err)
			}
			return &v
		}
	}
	t.Fatalf("no %s %q", kind, name)
	return nil
}

func webhookFiles(t *testing.T) []string {
	dir := testdeploy.WebhookDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		// kubectl apply -f deploy/webhook/ does not descend into optional/.
		if !e.IsDir() {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files
}

func agentFile() string { return testdeploy.AgentFile() }

func TestWebhookFolderAppliesInOrder(t *testing.T) {
	var kinds []string
	for _, o := range load(t, webhookFiles(t)...) {
		kinds = append(kinds, o.u.GetKind())
		if o.file == "kustomization.yaml" {
			t.Error("deploy/webhook/ must stay plain manifests: no kustomization.yaml")
		}
	}
	want := []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
		"PriorityClass", "Deployment", "PodDisruptionBudget", "Service", "Issuer", "Certificate", "Issuer", "Certificate", "Certificate",
		"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
	if !slices.Equal(kinds, want) {
		t.Errorf("kubectl apply -f deploy/webhook/ applies\n %v\nwant\n %v", kinds, want)
	}
}

// TestAgentFileDeletesTheDaemonSetFirst: `kubectl delete -f` deletes in file
// order. With the ServiceAccount first, a stopping agent's token is refused
// before it reads its DaemonSet; with the DaemonSet first, it finds it gone.
func TestAgentFileDeletesTheDaemonSetFirst(t *testing.T) {
	var kinds []string
	for _, o := range load(t, agentFile()) {
		kinds = append(kinds, o.u.GetKind())
	}
	want := []string{"DaemonSet", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
	if !slices.Equal(kinds, want) {
		t.Errorf("deploy/agent/daemonset.yaml holds\n %v\nwant\n %v", kinds, want)
	}
}

func TestWebhookConfigurations(t *testing.T) {
	objs := load(t, webhookFiles(t)...)
	mut := find[admissionv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", "power-webhook")
	val := find[admissionv1.ValidatingWebhookConfiguration](t, objs, "ValidatingWebhookConfiguration", "power-webhook")
	type common struct {
		name, path  string
		annotations map[string]string
		cc          admissionv1.WebhookClientConfig
		rules       []admissionv1.RuleWithOperations
		failure     *admissionv1.FailurePolicyType
		side        *admissionv1.SideEffectClass
		timeout     *int32
		ns          *metav1.LabelSelector
		conds       []admissionv1.MatchCondition
		wantTimeout int32
	}
	m, v := mut.Webhooks[0], val.Webhooks[0]
	for _, c := range []common{
		{m.Name, powerwebhook.MutatePath, mut.Annotations, m.ClientConfig, m.Rules, m.FailurePolicy, m.SideEffects, m.TimeoutSeconds, m.NamespaceSelector, m.MatchConditions, 3},
		{v.Name, powerwebhook.ValidatePath, val.Annotations, v.ClientConfig, v.Rules, v.FailurePolicy, v.SideEffects, v.TimeoutSeconds, v.NamespaceSelector, v.MatchConditions, 5},
	} {
		if c.annotations["cert-manager.io/inject-ca-from"] != "dynamo-system/power-webhook-serving" {
			t.Errorf("%s: inject-ca-from = %q", c.name, c.annotations["cert-manager.io/inject-ca-from"])
		}
		s := c.cc.Service
		if s == nil || s.Name != "power-webhook" || s.Namespace != "dynamo-system" || s.Path == nil || *s.Path != c.path || s.Port == nil || *s.Port != 443 {
			t.Errorf("%s: clientConfig %+v; want service dynamo-system/power-webhook:443%s", c.name, s, c.path)
		}
		if c.failure == nil || *c.failure != admissionv1.Fail {
			t.Errorf("%s: failurePolicy must be Fail (the agent trusts the stamp)", c.name)
		}
		if c.side == nil || *c.side != admissionv1.SideEffectClassNoneOnDryRun {
			t.Errorf("%s: sideEffects must be NoneOnDryRun", c.name)
		}
		if c.timeout == nil || *c.timeout != c.wantTimeout {
			t.Errorf("%s: timeoutSeconds %v; want %d", c.name, c.timeout, c.wantTimeout)
		}
		wantRules := []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
			Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: ptr.To(admissionv1.NamespacedScope)}}}
		if !reflect.DeepEqual(c.rules, wantRules) {
			t.Errorf("%s: rules %+v; want CREATE and UPDATE of pods only", c.name, c.rules)
		}
		if len(c.conds) != 1 || !strings.Contains(c.conds[0].Expression, policy.AnnotationPowerLimit) ||
			!strings.Contains(c.conds[0].Expression, policy.AnnotationPowerLimitValidated) {
			t.Errorf("%s: matchConditions must let through only pods with a power annotation or a GPU request", c.name)
		}
		if len(c.conds) == 1 && !strings.Contains(c.conds[0].Expression, "size(object.spec.resourceClaims) > 0") {
			t.Errorf("%s: matchConditions do not let through pods with resourceClaims: their GPUs would be neither checked nor refused where a budget applies", c.name)
		}
		// A DeviceClass may serve any extended resource through DRA (its
		// extendedResourceName): every one reaches the webhooks.
		if len(c.conds) == 1 && !strings.Contains(c.conds[0].Expression, `r.contains("/")`) {
			t.Errorf("%s: matchConditions do not let through every extended resource: a budget would not charge one a DeviceClass serves with GPUs", c.name)
		}
	}
	// pods/status and bindings skip the checks of a pod update: their
	// webhooks must see a write of any annotation only the webhook sets.
	for _, w := range val.Webhooks[1:] {
		if !slices.ContainsFunc(w.Rules, func(r admissionv1.RuleWithOperations) bool {
			return slices.Contains(r.Resources, "pods/status") || slices.Contains(r.Resources, "bindings")
		}) {
			continue
		}
		for _, key := range policy.WebhookAnnotations {
			if len(w.MatchConditions) != 1 || !strings.Contains(w.MatchConditions[0].Expression, `"`+key+`"`) {
				t.Errorf("%s: matchConditions do not name %s: a write of it there would go unchecked", w.Name, key)
			}
		}
	}
	if m.ReinvocationPolicy == nil || *m.ReinvocationPolicy != admissionv1.IfNeededReinvocationPolicy {
		t.Error("mutating webhook: reinvocationPolicy must be IfNeeded so the stamp follows later mutations")
	}
}

// TestSkippedNamespacesAgree: the namespaces the webhook never sees are
// listed in three places that must say the same: the namespaceSelector of
// every pod webhook (deploy/webhook/60-*, 61-*), policy.SkippedNamespaces
// (the agent's --webhook-skipped-namespaces default), and the agent
// DaemonSet's args if they set the flag. If they differed, the agent would
// enforce stamps the webhook never checked, or ignore ones it did.
func TestSkippedNamespacesAgree(t *testing.T) {
	objs := load(t, webhookFiles(t)...)
	mut := find[admissionv1.MutatingWebhookConfiguration](t, objs, "MutatingWebhookConfiguration", "power-webhook")
	val := find[admissionv1.ValidatingWebhookConfiguration](t, objs, "ValidatingWebhookConfiguration", "power-webhook")
	type hook struct {
		name  string
		rules []admissionv1.RuleWithOperations
		ns    *metav1.LabelSelector
	}
	var hooks []hook
	for _, w := range mut.Webhooks {
		hooks = append(hooks, hook{w.Name, w.Rules, w.NamespaceSelector})
	}
	for _, w := range val.Webhooks {
		hooks = append(hooks, hook{w.Name, w.Rules, w.NamespaceSelector})
	}
	want := slices.Sorted(slices.Values(policy.SkippedNamespaces))
	podHooks := 0
	for _, h := range hooks {
		pods := slices.ContainsFunc(h.rules, func(r admissionv1.RuleWithOperations) bool {
			return slices.ContainsFunc(r.Resources, func(res string) bool { return res == "pods" || strings.HasPrefix(res, "pods/") })
		})
		if !pods {
			continue // cluster-scoped objects (GPUPowerBudget): no namespace to skip
		}
		podHooks++
		if h.ns == nil || len(h.ns.MatchLabels) != 0 || len(h.ns.MatchExpressions) != 1 || h.ns.MatchExpressions[0].Key != corev1.LabelMetadataName ||
			h.ns.MatchExpressions[0].Operator != metav1.LabelSelectorOpNotIn {
			t.Errorf("%s: namespaceSelector %+v; want only %s NotIn %v (policy.SkippedNamespaces)", h.name, h.ns, corev1.LabelMetadataName, want)
			continue
		}
		if got := slices.Sorted(slices.Values(h.ns.MatchExpressions[0].Values)); !slices.Equal(got, want) {
			t.Errorf("%s skips namespaces %v, policy.SkippedNamespaces (the agent's default) is %v: change both", h.name, got, want)
		}
	}
	if podHooks != 4 {
		t.Errorf("%d pod webhooks; want 4 (mutate, validate, pods/status, pods/binding): a new one must be checked here", podHooks)
	}
	ds := find[appsv1.DaemonSet](t, load(t, agentFile()), "DaemonSet", "power-agent")
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, a := range c.Args {
			v, ok := strings.CutPrefix(a, "--webhook-skipped-namespaces=")
			if !ok {
				if strings.HasPrefix(a, "--webhook-skipped-namespaces") {
					t.Errorf("container %s: write %q as --webhook-skipped-namespaces=LIST, one argument", c.Name, a)
				}
				continue
			}
			var got []string
			for _, ns := range strings.Split(v, ",") {
				if ns = strings.TrimSpace(ns); ns != "" {
					got = append(got, ns)
				}
			}
			if slices.Sort(got); !slices.Equal(got, want) {
				t.Errorf("the agent DaemonSet sets --webhook-skipped-namespaces=%s, the webhook skips %v: change both", v, want)
			}
		}
	}
}

func TestRBACIsLeastPrivilege(t *testing.T) {
	objs := append(load(t, webhookFiles(t)...), load(t, agentFile())...)
	tests := []struct {
		kind, name string
		rules      []rbacv1.PolicyRule
	}{
		{"ClusterRole", "power-webhook-role", []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods", "nodes", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"power.dynamo.nvidia.com"}, Resources: []string{"gpupowerbudgets"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"power.dynamo.nvidia.com"}, Resources: []string{"gpupowerbudgets/status"}, Verbs: []string{"get", "update", "patch"}},
			{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
			{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"deviceclasses", "resourceslices"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceclaimtemplates", "resourceclaims"}, Verbs: []string{"get"}},
		}},
		{"Role", "power-webhook-leader-election", []rbacv1.PolicyRule{
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}},
		}},
		{"ClusterRole", "power-agent-role", []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
			{APIGroups: []string{"resource.k8s.io"}, Resources: []string{"resourceslices"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		}},
	}
	for _, tt := range tests {
		var rules []rbacv1.PolicyRule
		if tt.kind == "Role" {
			rules = find[rbacv1.Role](t, objs, tt.kind, tt.name).Rules
		} else {
			rules = find[rbacv1.ClusterRole](t, objs, tt.kind, tt.name).Rules
		}
		if !reflect.DeepEqual(rules, tt.rules) {
			t.Errorf("%s %s grants\n %+v\nwant exactly\n %+v", tt.kind, tt.name, rules, tt.rules)
		}
	}
	crb := find[rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "power-agent-binding")
	if crb.RoleRef.Name != "power-agent-role" || len(crb.Subjects) != 1 || crb.Subjects[0].Name != "power-agent-sa" || crb.Subjects[0].Namespace != "dynamo-system" {
		t.Errorf("power-agent-binding: %+v", crb)
	}
}

func TestWebhookDeploymentIsLockedDown(t *testing.T) {
	objs := load(t, webhookFiles(t)...)
	d := find[appsv1.Deployment](t, objs, "Deployment", "power-webhook")
	spec := d.Spec.Template.Spec
	if d.Namespace != "dynamo-system" || d.Spec.Replicas == nil || *d.Spec.Replicas != 3 || spec.ServiceAccountName != "power-webhook-sa" {
		t.Errorf("deployment: namespace %s, replicas %v, serviceAccount %s", d.Namespace, d.Spec.Replicas, spec.ServiceAccountName)
	}
	ps := spec.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod securityContext must run as non-root with the RuntimeDefault seccomp profile")
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 || sc.Privileged != nil {
		t.Error("container must have a read-only root filesystem, no privilege escalation, and drop ALL capabilities")
	}
	if _, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
		t.Error("the webhook must have no CPU limit: throttling shows up as admission latency")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("readiness (/readyz) and liveness (/healthz) probes are required")
	} else if c.LivenessProbe.TimeoutSeconds < 5 {
		t.Errorf("liveness timeout %ds: a replica starved of CPU for a few seconds would be restarted, refusing GPU pods meanwhile; want at least 5s", c.LivenessProbe.TimeoutSeconds)
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Error("a preStop delay is required so endpoints drop the replica before it stops")
	}
	if spec.PriorityClassName == "" || len(spec.TopologySpreadConstraints) == 0 {
		t.Error("priority class and topology spread are required")
	}
	if v := spec.Volumes[0]; v.Secret == nil || v.Secret.SecretName != "power-webhook-serving-cert" || !c.VolumeMounts[0].ReadOnly {
		t.Error("the serving certificate comes read-only from cert-manager's Secret")
	}
	pdb := find[policyv1.PodDisruptionBudget](t, objs, "PodDisruptionBudget", "power-webhook")
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Error("PodDisruptionBudget must keep at least one replica")
	}
	svc := find[corev1.Service](t, objs, "Service", "power-webhook")
	if svc.Spec.Selector["app"] != "power-webhook" || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "webhook" {
		t.Errorf("service: %+v", svc.Spec)
	}
}

// TestWebhookThreadsFollowItsCPURequest: with no CPU limit the Go runtime
// would run a scheduler thread per node CPU; GOMAXPROCS comes from the
// container's CPU request instead, and the sandbox's process gets the same
// value the kubelet would give (100m rounds up to 1).
func TestWebhookThreadsFollowItsCPURequest(t *testing.T) {
	d := find[appsv1.Deployment](t, load(t, webhookFiles(t)...), "Deployment", "power-webhook")
	c := d.Spec.Template.Spec.Containers[0]
	i := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMAXPROCS" })
	if i < 0 || c.Env[i].ValueFrom == nil || c.Env[i].ValueFrom.ResourceFieldRef == nil {
		t.Fatalf("container %s: want GOMAXPROCS from a resourceFieldRef, got env %+v", c.Name, c.Env)
	}
	ref := c.Env[i].ValueFrom.ResourceFieldRef
	// No containerName: it defaults to the container itself, and one that a
	// rename left behind would keep the kubelet from starting the webhook.
	if ref.Resource != "requests.cpu" || ref.ContainerName != "" || ref.Divisor.Cmp(resource.MustParse("1")) != 0 {
		t.Errorf("GOMAXPROCS from %+v; want the container's own requests.cpu with divisor 1", ref)
	}
	env, err := testdeploy.WebhookResourceEnv()
	if want := "GOMAXPROCS=" + strconv.FormatInt(c.Resources.Requests.Cpu().Value(), 10); err != nil || !slices.Equal(env, []string{want}) {
		t.Errorf("WebhookResourceEnv() = %v, %v; want [%s]", env, err, want)
	}
}

func TestCertificateChain(t *testing.T) {
	objs := load(t, webhookFiles(t)...)
	get := func(kind, name string) map[string]any {
		for _, o := range objs {
			if o.u.GetKind() == kind && o.u.GetName() == name {
				return o.u.Object["spec"].(map[string]any)
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return nil
	}
	if _, ok := get("Issuer", "power-webhook-selfsigned")["selfSigned"]; !ok {
		t.Error("the chain starts from a self-signed Issuer")
	}
	ca := get("Certificate", "power-webhook-ca")
	if ca["isCA"] != true || ca["issuerRef"].(map[string]any)["name"] != "power-webhook-selfsigned" {
		t.Errorf("CA certificate: %v", ca)
	}
	if get("Issuer", "power-webhook-ca")["ca"].(map[string]any)["secretName"] != ca["secretName"] {
		t.Error("the CA Issuer must sign with the CA certificate's secret")
	}
	serving := get("Certificate", "power-webhook-serving")
	if serving["isCA"] == true || serving["issuerRef"].(map[string]any)["name"] != "power-webhook-ca" || serving["secretName"] != "power-webhook-serving-cert" {
		t.Errorf("serving certificate must be a leaf issued by the CA Issuer: %v", serving)
	}
	if names := serving["dnsNames"].([]any); !slices.Contains(names, any("power-webhook.dynamo-system.svc")) {
		t.Errorf("serving certificate names %v; want the Service's DNS name", names)
	}
}

func TestAgentDaemonSet(t *testing.T) {
	objs := load(t, agentFile())
	for _, o := range objs {
		if o.u.GetKind() == "Namespace" {
			t.Error("daemonset.yaml must not contain the shared namespace: deleting it would remove the webhook")
		}
	}
	ds := find[appsv1.DaemonSet](t, objs, "DaemonSet", "power-agent")
	spec := ds.Spec.Template.Spec
	if ds.Namespace != "dynamo-system" || ds.Labels["app"] != "power-agent" || ds.Spec.Selector.MatchLabels["app"] != "power-agent" ||
		spec.ServiceAccountName != "power-agent-sa" || spec.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Errorf("names and selectors changed: %+v", ds.ObjectMeta)
	}
	if !spec.HostPID || spec.RuntimeClassName == nil || *spec.RuntimeClassName != "nvidia" || spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds != 60 {
		t.Error("hostPID, runtimeClassName nvidia and a 60 s grace period are required")
	}
	if !slices.ContainsFunc(spec.Tolerations, func(tol corev1.Toleration) bool { return tol.Key == "nvidia.com/gpu" }) {
		t.Error("the agent must tolerate nvidia.com/gpu taints")
	}
	c := spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env["NODE_NAME"]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Error("NODE_NAME must come from spec.nodeName")
	}
	if env["NVIDIA_VISIBLE_DEVICES"].Value != "all" {
		t.Error("NVIDIA_VISIBLE_DEVICES=all shows every GPU without claiming one")
	}
	for _, list := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
		if _, ok := list[policy.ResourceGPU]; ok {
			t.Error("the agent must not claim an nvidia.com/gpu")
		}
	}
	want := corev1.ResourceRequirements{}
	if err := sigsyaml.Unmarshal([]byte("requests: {cpu: 100m, memory: 128Mi}\nlimits: {cpu: 200m, memory: 256Mi}"), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Resources.Requests, want.Requests) || !reflect.DeepEqual(c.Resources.Limits, want.Limits) {
		t.Errorf("resources %+v; want requests 100m/128Mi, limits 200m/256Mi", c.Resources)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("NVML power-limit writes need a privileged container")
	}
	if !slices.Contains(c.Args, "--require-pod-resources") {
		t.Error("the agent must refuse the NVML-only fallback (--require-pod-resources): allocation is the truth of who holds a GPU")
	}
	if c.ReadinessProbe == nil || !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" }) {
		t.Error("a readiness probe and a metrics port are required")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			continue
		}
		switch v.HostPath.Path {
		case "/var/lib/kubelet/pod-resources":
			if !mounts[v.Name].ReadOnly {
				t.Error("the PodResources socket directory must be mounted read-only")
			}
		case "/var/lib/power-agent":
			if mounts[v.Name].ReadOnly {
				t.Error("the state directory must be writable")
			}
		case "/proc":
			t.Error("hostPID gives the host's /proc; it must not be a hostPath (and never DirectoryOrCreate)")
		default:
			t.Errorf("unexpected hostPath %s", v.HostPath.Path)
		}
	}
}

// TestExampleBudget keeps the commented example in deploy/webhook/ a valid
// GPUPowerBudget once uncommented.
func TestExampleBudget(t *testing.T) {
	data, err := testdeploy.ExampleBudget()
	if err != nil {
		t.Fatal(err)
	}
	var b powerv1alpha1.GPUPowerBudget
	if err := sigsyaml.UnmarshalStrict(data, &b); err != nil {
		t.Fatalf("the uncommented example is not a GPUPowerBudget: %v", err)
	}
	if b.Kind != "GPUPowerBudget" || b.Spec.TotalWatts <= 0 || b.Spec.NamespaceSelector == nil || len(b.Spec.Defaults) == 0 {
		t.Errorf("example budget: %+v", b)
	}
}
