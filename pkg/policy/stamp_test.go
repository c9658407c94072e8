package policy_test

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

const signatureInvalid = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit-signature]: Invalid value: "

// TestSignedStamps: with a key, every stamp the webhook sets carries its
// signature, Validate refuses any other, and the signature binds the
// namespace and the limit.
func TestSignedStamps(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	other := policy.NewStampKey([]byte("another cluster's key material, 32+ bytes"))
	cluster := fakeCluster{"h100-0": h100}
	a := newAdmission(t)
	a.StampKey = key
	sig := key.Sign("llm", "250")
	with := func(p *corev1.Pod, sig string) *corev1.Pod {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[policy.AnnotationPowerLimitSignature] = sig
		return p
	}
	running := func() *corev1.Pod { return pod().GPU(1).NodeName("h100-0").Limit("250").Stamp("250").Obj() }

	v := a.Mutate(admissionv1.Create, pod().GPU(1).Limit("250").Obj(), nil, cluster, nil)
	if v.Stamp != "250" || v.Signature != sig {
		t.Fatalf("Mutate: stamp %q signature %q; want 250 signed", v.Stamp, v.Signature)
	}
	if v := a.Mutate(admissionv1.Create, pod().Limit("250").Obj(), nil, cluster, nil); v.Stamp != "" || v.Signature != "" {
		t.Errorf("no GPUs: stamp %q signature %q; want neither", v.Stamp, v.Signature)
	}
	if v := a.Mutate(admissionv1.Update, running(), with(running(), "kept"), cluster, nil); v.Signature != "kept" {
		t.Errorf("an update keeping the limit: signature %q; want the old one kept", v.Signature)
	}
	if !key.Verify("llm", "250", sig) || key.Verify("other-tenant", "250", sig) || key.Verify("llm", "300", sig) || other.Verify("llm", "250", sig) || key.Verify("llm", "250", "") {
		t.Error("a signature must verify only for its namespace, its limit and its key")
	}

	for _, tt := range []struct {
		name     string
		op       admissionv1.Operation
		old, pod *corev1.Pod
		errs     []string
	}{
		{"signed stamp", admissionv1.Create, nil, with(running(), sig), nil},
		{"stamp typed without a signature", admissionv1.Create, nil, running(),
			[]string{signatureInvalid + `"": is not the power webhook's signature of the stamp; only the power webhook sets it`}},
		{"signature copied from another limit", admissionv1.Create, nil, with(pod().GPU(1).NodeName("h100-0").Limit("300").Stamp("300").Obj(), sig),
			[]string{signatureInvalid + `"` + sig[:40] + `…" (43 bytes, truncated): is not the power webhook's signature of the stamp; only the power webhook sets it`}},
		{"signature without a stamp", admissionv1.Create, nil, with(pod().GPU(1).Obj(), sig),
			[]string{signatureInvalid + `"` + sig[:40] + `…" (43 bytes, truncated): must be absent here; only the power webhook sets it`}},
		{"update keeping limit and signature", admissionv1.Update, with(running(), sig), with(running(), sig), nil},
		{"update changing the signature", admissionv1.Update, running(), with(running(), sig),
			[]string{signatureInvalid + `"` + sig[:40] + `…" (43 bytes, truncated): must stay as it was while dynamo.nvidia.com/gpu-power-limit is unchanged; only the power webhook sets it`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assertVerdict(t, a.Validate(tt.op, tt.pod, tt.old, cluster), tt.errs, nil)
		})
	}
}
