package policy_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

const signatureInvalid = "metadata.annotations[dynamo.nvidia.com/gpu-power-limit-signature]: Invalid value: "

// TestStampSignatures: a creation's signature binds namespace, limit and the
// time it was made (held against the pod's creationTimestamp); an update's
// binds namespace, limit and the pod's UID. Nothing verifies elsewhere.
func TestStampSignatures(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	other := policy.NewStampKey([]byte("another cluster's key material, 32+ bytes"))
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	c, u := key.SignCreate("llm", "250", at), key.SignUpdate("llm", "uid-1", "250")
	for _, tt := range []struct {
		name    string
		ns      string
		uid     string
		created time.Time
		limit   string
		sig     string
		ok      bool
	}{
		{"creation: its pod", "llm", "uid-1", at.Add(time.Second), "250", c, true},
		{"creation: a pod created within the window", "llm", "uid-2", at.Add(policy.StampWindow), "250", c, true},
		{"creation: copied onto a later pod", "llm", "uid-2", at.Add(policy.StampWindow + time.Second), "250", c, false},
		{"creation: another namespace", "other", "uid-1", at, "250", c, false},
		{"creation: another limit", "llm", "uid-1", at, "300", c, false},
		{"creation: time edited", "llm", "uid-1", at.Add(time.Hour), "250", strings.Replace(c, "c.1796", "c.1797", 1), false},
		{"creation: time with a leading zero", "llm", "uid-1", at, "250", strings.Replace(c, "c.", "c.0", 1), false},
		{"update: its pod", "llm", "uid-1", at.Add(time.Hour), "250", u, true},
		{"update: another pod", "llm", "uid-2", at, "250", u, false},
		{"another key", "llm", "uid-1", at, "250", other.SignCreate("llm", "250", at), false},
		{"empty", "llm", "uid-1", at, "250", "", false},
		{"garbage", "llm", "uid-1", at, "250", "c.x.y", false},
	} {
		if got := key.Verify(tt.ns, types.UID(tt.uid), tt.created, tt.limit, tt.sig); got != tt.ok {
			t.Errorf("%s: Verify = %v; want %v", tt.name, got, tt.ok)
		}
	}
}

// TestSignedStamps: with a key, every stamp the webhook sets carries its
// signature, and Validate refuses any other.
func TestSignedStamps(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	cluster := fakeCluster{"h100-0": h100}
	a := newAdmission(t)
	a.StampKey, a.Now = key, func() time.Time { return now }
	with := func(p *corev1.Pod, sig string) *corev1.Pod {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		p.Annotations[policy.AnnotationPowerLimitSignature] = sig
		return p
	}
	running := func() *corev1.Pod {
		return pod().UID("uid-1").GPU(1).NodeName("h100-0").Limit("250").Stamp("250").Obj()
	}

	if v := a.Mutate(admissionv1.Create, pod().GPU(1).Limit("250").Obj(), nil, cluster, nil, policy.ClaimsDemand{}); v.Stamp != "250" || v.Signature != key.SignCreate("llm", "250", now) {
		t.Errorf("Mutate on create: stamp %q signature %q; want 250 signed at creation", v.Stamp, v.Signature)
	}
	raised := running()
	raised.Annotations[policy.AnnotationPowerLimit] = "300"
	if v := a.Mutate(admissionv1.Update, raised, running(), cluster, nil, policy.ClaimsDemand{}); v.Signature != key.SignUpdate("llm", "uid-1", "300") {
		t.Errorf("Mutate on a limit change: signature %q; want the update form for uid-1", v.Signature)
	}
	if v := a.Mutate(admissionv1.Create, pod().Limit("250").Obj(), nil, cluster, nil, policy.ClaimsDemand{}); v.Stamp != "" || v.Signature != "" {
		t.Errorf("no GPUs: stamp %q signature %q; want neither", v.Stamp, v.Signature)
	}
	if v := a.Mutate(admissionv1.Update, running(), with(running(), "kept"), cluster, nil, policy.ClaimsDemand{}); v.Signature != "kept" {
		t.Errorf("an update keeping the limit: signature %q; want the old one kept", v.Signature)
	}

	stale := key.SignCreate("llm", "250", now.Add(-time.Hour))
	for _, tt := range []struct {
		name     string
		op       admissionv1.Operation
		old, pod *corev1.Pod
		errs     []string
	}{
		{"signed stamp", admissionv1.Create, nil, with(running(), key.SignCreate("llm", "250", now)), nil},
		{"stamp typed without a signature", admissionv1.Create, nil, running(),
			[]string{signatureInvalid + `"": is not the power webhook's signature of the stamp; only the power webhook sets it`}},
		{"a creation signature from an hour ago", admissionv1.Create, nil, with(running(), stale),
			[]string{signatureInvalid + `"` + stale[:40] + `…" (56 bytes, truncated): is not the power webhook's signature of the stamp; only the power webhook sets it`}},
		{"signature without a stamp", admissionv1.Create, nil, with(pod().GPU(1).Obj(), stale),
			[]string{signatureInvalid + `"` + stale[:40] + `…" (56 bytes, truncated): must be absent here; only the power webhook sets it`}},
		{"update keeping limit and signature", admissionv1.Update, with(running(), stale), with(running(), stale), nil},
		{"update changing the signature", admissionv1.Update, running(), with(running(), stale),
			[]string{signatureInvalid + `"` + stale[:40] + `…" (56 bytes, truncated): must stay as it was while dynamo.nvidia.com/gpu-power-limit is unchanged; only the power webhook sets it`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assertVerdict(t, a.Validate(tt.op, tt.pod, tt.old, cluster, policy.ClaimsDemand{}), tt.errs, nil)
		})
	}
}

// TestValidatedLimits is what the webhook's pod index charges by the limit
// (and the agent enforces): a stamp equal to the limit, signed for the pod
// when stamps are signed. Any other limit is charged as no limit.
func TestValidatedLimits(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	pod := func(limit, stamp, sig string) *corev1.Pod {
		p := testpod.MakePod("a", "llm").UID("uid-1").GPU(1).Limit(limit).Obj()
		p.CreationTimestamp = metav1.NewTime(created)
		if stamp != "" {
			p.Annotations[policy.AnnotationPowerLimitValidated] = stamp
		}
		if sig != "" {
			p.Annotations[policy.AnnotationPowerLimitSignature] = sig
		}
		return p
	}
	for _, tc := range []struct {
		name string
		key  policy.StampKey
		pod  *corev1.Pod
		want bool
	}{
		{"signed at creation", key, pod("250", "250", key.SignCreate("llm", "250", created)), true},
		{"signed on an update", key, pod("250", "250", key.SignUpdate("llm", "uid-1", "250")), true},
		{"typed where the webhook never looked: no stamp", key, pod("250", "", ""), false},
		{"a stamp typed too, unsigned", key, pod("1", "1", ""), false},
		{"a signature of another namespace", key, pod("250", "250", key.SignCreate("web", "250", created)), false},
		{"a signature of another limit", key, pod("1", "1", key.SignCreate("llm", "250", created)), false},
		{"the limit changed after the stamp", key, pod("300", "250", key.SignCreate("llm", "250", created)), false},
		{"unsigned stamps: the stamp alone", nil, pod("250", "250", ""), true},
		{"unsigned stamps: no stamp", nil, pod("250", "", ""), false},
	} {
		if got := tc.key.Validated(tc.pod); got != tc.want {
			t.Errorf("%s: Validated = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStampKeysInterleaved: the HMACs kept between uses are the key's own,
// whichever keys sign in turn and from however many goroutines; each
// signature is the one a fresh HMAC of that key makes.
func TestStampKeysInterleaved(t *testing.T) {
	keys := []policy.StampKey{policy.NewStampKey([]byte("one")), policy.NewStampKey([]byte("two"))}
	at := time.Unix(1764600000, 0)
	fresh := func(k policy.StampKey) string {
		m := hmac.New(sha256.New, k)
		m.Write([]byte("c\x00llm\x00500\x001764600000\x00"))
		return "c.1764600000." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	want := []string{fresh(keys[0]), fresh(keys[1])}
	if want[0] == want[1] {
		t.Fatal("two keys made one signature")
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				j := (g + i) % 2
				if got := keys[j].SignCreate("llm", "500", at); got != want[j] {
					t.Errorf("key %d signed %q; a fresh HMAC of it signs %q", j, got, want[j])
					return
				}
			}
		})
	}
	wg.Wait()
}

func BenchmarkStampVerify(b *testing.B) {
	k := policy.NewStampKey([]byte("material"))
	at := time.Unix(1764600000, 0)
	sig := k.SignCreate("llm", "500", at)
	b.ReportAllocs()
	for b.Loop() {
		if !k.Verify("llm", "uid-1", at, "500", sig) {
			b.Fatal("not verified")
		}
	}
}
