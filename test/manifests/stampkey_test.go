package manifests_test

import (
	"path"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// TestStampKeyIsSharedAndKept: the webhook signs stamps and the agent
// verifies them with one key: both mount the same Secret's tls.key alone and
// name it in --stamp-key-file, and cert-manager never rotates that key (a
// new one would void every signed stamp).
func TestStampKeyIsSharedAndKept(t *testing.T) {
	objs := load(t, append(webhookFiles(t), agentFile())...)
	var spec map[string]any
	for _, o := range objs {
		if o.u.GetKind() == "Certificate" && o.u.GetName() == "power-stamp-key" {
			spec = o.u.Object["spec"].(map[string]any)
		}
	}
	if spec == nil || spec["secretName"] != "power-stamp-key" || spec["privateKey"].(map[string]any)["rotationPolicy"] != "Never" {
		t.Fatalf("Certificate power-stamp-key: %v; want secret power-stamp-key with privateKey.rotationPolicy Never", spec)
	}
	d := find[appsv1.Deployment](t, objs, "Deployment", "power-webhook")
	ds := find[appsv1.DaemonSet](t, objs, "DaemonSet", "power-agent")
	for name, pod := range map[string]corev1.PodSpec{"webhook": d.Spec.Template.Spec, "agent": ds.Spec.Template.Spec} {
		c := pod.Containers[0]
		var file string
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--stamp-key-file="); ok {
				file = v
			}
		}
		var mounted bool
		for _, v := range pod.Volumes {
			if v.Secret == nil || v.Secret.SecretName != "power-stamp-key" {
				continue
			}
			if len(v.Secret.Items) != 1 || v.Secret.Items[0].Key != "tls.key" {
				t.Errorf("%s: the stamp key volume projects %v; want tls.key alone", name, v.Secret.Items)
			}
			i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == v.Name })
			mounted = i >= 0 && c.VolumeMounts[i].ReadOnly && file == path.Join(c.VolumeMounts[i].MountPath, v.Secret.Items[0].Path)
		}
		if !mounted {
			t.Errorf("%s: --stamp-key-file=%q is not the read-only mount of Secret power-stamp-key's tls.key", name, file)
		}
	}
}
