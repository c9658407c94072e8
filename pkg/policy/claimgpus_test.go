package policy_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func podClaims(names ...string) []corev1.PodResourceClaim {
	var out []corev1.PodResourceClaim
	for _, n := range names {
		name, claim, named := strings.Cut(n, ":")
		pc := corev1.PodResourceClaim{Name: name}
		if named {
			pc.ResourceClaimName = &claim
		} else {
			pc.ResourceClaimTemplateName = &name
		}
		out = append(out, pc)
	}
	return out
}

func TestParseClaimGPUs(t *testing.T) {
	claims := podClaims("gpus", "more", "shared:pool", "again:pool", "other:pool-2")
	for _, tt := range []struct {
		value string
		want  policy.ClaimGPUs
		ok    bool
	}{
		{"gpus=2", policy.ClaimGPUs{Own: 2}, true},
		{"gpus=2,more=3", policy.ClaimGPUs{Own: 5}, true},
		{"gpus=1,other=4,shared=2", policy.ClaimGPUs{Own: 1, Shared: []policy.SharedClaim{{Claim: "pool", GPUs: 2}, {Claim: "pool-2", GPUs: 4}}}, true},
		{"again=3,shared=2", policy.ClaimGPUs{Shared: []policy.SharedClaim{{Claim: "pool", GPUs: 3}}}, true}, // one claim, twice in the pod
		{"", policy.ClaimGPUs{}, false},
		{"more=3,gpus=2", policy.ClaimGPUs{}, false}, // not sorted
		{"gpus=2,gpus=2", policy.ClaimGPUs{}, false},
		{"gpus=0", policy.ClaimGPUs{}, false},
		{"gpus=-1", policy.ClaimGPUs{}, false},
		{"gpus=02", policy.ClaimGPUs{}, false},
		{"gpus=+2", policy.ClaimGPUs{}, false},
		{"gpus=2,", policy.ClaimGPUs{}, false},
		{"gpus", policy.ClaimGPUs{}, false},
		{"gpus=99999999999999999999", policy.ClaimGPUs{}, false},
		{"unknown=1", policy.ClaimGPUs{}, false},
		{" gpus=2", policy.ClaimGPUs{}, false},
	} {
		got, ok := policy.ParseClaimGPUs(tt.value, claims)
		if ok != tt.ok || got.Own != tt.want.Own || !slices.Equal(got.Shared, tt.want.Shared) {
			t.Errorf("ParseClaimGPUs(%q) = %+v, %v; want %+v, %v", tt.value, got, ok, tt.want, tt.ok)
		}
	}
	if got := policy.FormatClaimGPUs(map[string]int64{"shared": 2, "gpus": 1, "none": 0}); got != "gpus=1,shared=2" {
		t.Errorf("FormatClaimGPUs = %q; want gpus=1,shared=2", got)
	}
}

// FuzzParseClaimGPUs: whatever a pod carries, the parse never panics, never
// yields a count below one, and takes exactly what FormatClaimGPUs writes.
func FuzzParseClaimGPUs(f *testing.F) {
	f.Add("gpus=2,shared=1", int64(3))
	f.Add("a=1,a=1", int64(1))
	f.Add("shared=9223372036854775807,gpus=1", int64(1<<62))
	f.Fuzz(func(t *testing.T, value string, n int64) {
		claims := podClaims("gpus", "shared:pool", "a", "b:pool")
		got, ok := policy.ParseClaimGPUs(value, claims)
		if ok {
			total := got.Own
			for _, s := range got.Shared {
				if s.GPUs < 1 {
					t.Fatalf("%q: shared count %d", value, s.GPUs)
				}
				total = policy.SatAdd(total, s.GPUs)
			}
			if total < 1 {
				t.Fatalf("%q: %+v counts no GPU", value, got)
			}
		}
		perClaim := map[string]int64{"gpus": n, "shared": n / 2}
		formatted := policy.FormatClaimGPUs(perClaim)
		back, ok := policy.ParseClaimGPUs(formatted, claims)
		positive := maps.Collect(func(yield func(string, int64) bool) {
			for k, v := range perClaim {
				if v > 0 && !yield(k, v) {
					return
				}
			}
		})
		if ok != (len(positive) > 0) || (ok && back.Own != max(n, 0)) {
			t.Fatalf("%v formatted %q parsed back as %+v, %v", perClaim, formatted, back, ok)
		}
	})
}

// The claims' GPU counts are written at creation, signed, and kept as they
// are after it; Validate refuses any other.
func TestClaimGPUsAnnotations(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	cluster := fakeCluster{"h100-0": h100}
	a := newAdmission(t)
	a.StampKey, a.Now = key, func() time.Time { return now }
	twoH100s := policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "claim gpus", Claim: "gpus", Class: policy.DeviceClassGPU, Count: 2,
		Devices: map[string]map[string]int{"dra-0": {h100DRA: 8}}}})
	newPod := func(annotations ...string) *corev1.Pod {
		p := pod().ResourceClaim("gpus", "two").Obj()
		for i := 0; i+1 < len(annotations); i += 2 {
			if p.Annotations == nil {
				p.Annotations = map[string]string{}
			}
			p.Annotations[annotations[i]] = annotations[i+1]
		}
		return p
	}
	signed := key.SignClaims("llm", "gpus=2", now)

	v := a.Mutate(admissionv1.Create, newPod(policy.AnnotationClaimGPUs, "gpus=0"), nil, cluster, nil, twoH100s)
	if v.ClaimGPUs != "gpus=2" || v.ClaimSignature != signed {
		t.Errorf("Mutate on create: counts %q signature %q; want gpus=2 signed", v.ClaimGPUs, v.ClaimSignature)
	}
	uncountable := policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "claim gpus", Claim: "gpus", Missing: "not found"}})
	if v := a.Mutate(admissionv1.Create, newPod(), nil, cluster, nil, uncountable); v.ClaimGPUs != "" || v.ClaimSignature != "" {
		t.Errorf("claims that cannot be counted: counts %q; want none", v.ClaimGPUs)
	}
	created := newPod(policy.AnnotationClaimGPUs, "gpus=2", policy.AnnotationClaimGPUsSignature, signed)
	if v := a.Mutate(admissionv1.Update, newPod(policy.AnnotationClaimGPUs, "gpus=1"), created, cluster, nil, policy.ClaimsDemand{}); v.ClaimGPUs != "gpus=2" || v.ClaimSignature != signed {
		t.Errorf("Mutate on update: counts %q; want the creation's kept", v.ClaimGPUs)
	}

	countsInvalid := "metadata.annotations[dynamo.nvidia.com/gpu-claims]: Invalid value: "
	sigInvalid := "metadata.annotations[dynamo.nvidia.com/gpu-claims-signature]: Invalid value: "
	limitSig := key.SignCreate("llm", "gpus=2", now)
	for _, tt := range []struct {
		name     string
		op       admissionv1.Operation
		old, pod *corev1.Pod
		claims   policy.ClaimsDemand
		errs     []string
	}{
		{"as the webhook set them", admissionv1.Create, nil, created, twoH100s, nil},
		{"fewer GPUs than the claims get", admissionv1.Create, nil, newPod(policy.AnnotationClaimGPUs, "gpus=1", policy.AnnotationClaimGPUsSignature, key.SignClaims("llm", "gpus=1", now)), twoH100s,
			[]string{countsInvalid + `"gpus=1": must be "gpus=2", the GPUs the pod's resourceClaims can get (absent: none, or not countable); only the power webhook sets it`}},
		{"counts without a signature", admissionv1.Create, nil, newPod(policy.AnnotationClaimGPUs, "gpus=2"), twoH100s,
			[]string{sigInvalid + `"": is not the power webhook's signature of the claims' GPU counts; only the power webhook sets it`}},
		{"a limit's signature is not the counts'", admissionv1.Create, nil, newPod(policy.AnnotationClaimGPUs, "gpus=2", policy.AnnotationClaimGPUsSignature, limitSig), twoH100s,
			[]string{sigInvalid + fmt.Sprintf("%q", limitSig[:40]+"…") + ` (56 bytes, truncated): is not the power webhook's signature of the claims' GPU counts; only the power webhook sets it`}},
		{"counts on claims that cannot be counted", admissionv1.Create, nil, created, uncountable,
			[]string{countsInvalid + `"gpus=2": must be "", the GPUs the pod's resourceClaims can get (absent: none, or not countable); only the power webhook sets it`}},
		{"update keeping them", admissionv1.Update, created, created.DeepCopy(), policy.ClaimsDemand{}, nil},
		{"update lowering the count", admissionv1.Update, created, newPod(policy.AnnotationClaimGPUs, "gpus=1", policy.AnnotationClaimGPUsSignature, signed), policy.ClaimsDemand{},
			[]string{countsInvalid + `"gpus=1": must stay "gpus=2", as the pod was created: its claims cannot change; only the power webhook sets it`}},
		{"update removing them", admissionv1.Update, created, newPod(), policy.ClaimsDemand{},
			[]string{countsInvalid + `"": must stay "gpus=2", as the pod was created: its claims cannot change; only the power webhook sets it`,
				sigInvalid + `"": must stay as the pod was created; only the power webhook sets it`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			assertVerdict(t, a.Validate(tt.op, tt.pod, tt.old, cluster, tt.claims), tt.errs, nil)
		})
	}
}

// What budgets charge by is the webhook's signature of the counts, held
// against the pod's creation; not a limit's signature, nor counts typed on a
// pod created where the webhook never looked.
func TestClaimsSigned(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	created := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	stored := func(ns, counts, sig string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, CreationTimestamp: metav1.NewTime(created),
			Annotations: map[string]string{policy.AnnotationClaimGPUs: counts, policy.AnnotationClaimGPUsSignature: sig}}}
	}
	for _, tt := range []struct {
		name string
		pod  *corev1.Pod
		want bool
	}{
		{"signed at creation", stored("llm", "gpus=2", key.SignClaims("llm", "gpus=2", created.Add(-time.Second))), true},
		{"another namespace's", stored("other", "gpus=2", key.SignClaims("llm", "gpus=2", created)), false},
		{"other counts'", stored("llm", "gpus=1", key.SignClaims("llm", "gpus=2", created)), false},
		{"signed an hour before the pod", stored("llm", "gpus=2", key.SignClaims("llm", "gpus=2", created.Add(-time.Hour))), false},
		{"a limit's signature", stored("llm", "gpus=2", key.SignCreate("llm", "gpus=2", created)), false},
		{"an update's form", stored("llm", "gpus=2", key.SignUpdate("llm", "", "gpus=2")), false},
		{"none", stored("llm", "gpus=2", ""), false},
	} {
		if got := key.ClaimsSigned(tt.pod); got != tt.want {
			t.Errorf("%s: ClaimsSigned = %v; want %v", tt.name, got, tt.want)
		}
	}
	if !policy.StampKey(nil).ClaimsSigned(stored("llm", "gpus=2", "")) {
		t.Error("without a key every count counts, as every stamp does")
	}
}

// A pod's cost is split into its own GPUs, keyed by the pod, and each named
// claim's, keyed by the claim; the recount charges a claim once, at the
// most any pod using it costs.
func TestClaimCharges(t *testing.T) {
	catalog := policy.DefaultCatalog()
	cluster := fakeCluster{"h100-0": h100}
	p := pod().UID("pod-1").GPU(1).ResourceClaim("own", "t").NamedClaim("shared", "pool").Limit("250").
		Annotation(policy.AnnotationClaimGPUs, "own=2,shared=3").Obj()
	cost := catalog.CostOf(p, cluster, true)
	if cost.Watts != 1500 || cost.GPUs != 6 {
		t.Fatalf("cost %+v; want 6 GPUs x 250 W", cost)
	}
	charges := cost.Charges("pod-1", "llm")
	want := []policy.Charge{{UID: "pod-1", Watts: 750, GPUs: 3}, {UID: policy.ClaimKey("llm", "pool"), Watts: 750, GPUs: 3, Shared: true, Pod: "pod-1"}}
	if !slices.Equal(charges, want) {
		t.Errorf("charges %+v; want %+v", charges, want)
	}
	if ns, claim, ok := policy.ClaimOfKey(charges[1].UID); !ok || ns != "llm" || claim != "pool" {
		t.Errorf("ClaimOfKey(%q) = %q %q %v", charges[1].UID, ns, claim, ok)
	}
	if _, _, ok := policy.ClaimOfKey("pod-1"); ok {
		t.Error("a pod's UID read as a claim's key")
	}
	// Without a limit, a claim's GPUs cost the catalog's highest default:
	// their products are not on the pod.
	unlimited := pod().UID("pod-2").NamedClaim("shared", "pool").Annotation(policy.AnnotationClaimGPUs, "shared=1").Obj()
	highest := policy.Watts(0)
	for _, r := range catalog {
		highest = max(highest, r.DefaultWatts())
	}
	if c := catalog.CostOf(unlimited, cluster, true); c.PerGPU != highest || !c.Unlimited || c.GPUs != 1 {
		t.Errorf("unlimited claim pod costs %+v; want 1 GPU at %d W", c, highest)
	}
	// Counts on a pod without those claims charge nothing.
	if c := catalog.CostOf(pod().Annotation(policy.AnnotationClaimGPUs, "shared=1").Obj(), cluster, true); c.GPUs != 0 {
		t.Errorf("counts without claims cost %+v; want nothing", c)
	}

	pool := policy.ClaimKey("llm", "pool")
	if claim, uid, ok := policy.ClaimReservationOf(policy.ClaimReservationKey(pool, "pod-9")); !ok || claim != pool || uid != "pod-9" {
		t.Errorf("ClaimReservationOf = %q %q %v", claim, uid, ok)
	}
	for _, key := range []string{"pod-1", string(pool), "resourceclaim:llm", "resourceclaim:/pool/x", "resourceclaim:llm/pool/"} {
		if _, _, ok := policy.ClaimReservationOf(types.UID(key)); ok {
			t.Errorf("%q read as a claim's reservation", key)
		}
	}
}

// The recount charges a claim once, at the most any pod using it costs,
// and a pod's reservation on it counts until that pod is seen charging it,
// whichever other pods use the claim meanwhile.
func TestCountCommittedClaims(t *testing.T) {
	now := time.Now()
	pool := policy.ClaimKey("llm", "pool")
	sharers := []policy.Charge{
		{UID: "a", Watts: 0}, {UID: pool, Watts: 600, GPUs: 2, Shared: true, Pod: "a"},
		{UID: "b", Watts: 300, GPUs: 1}, {UID: pool, Watts: 800, GPUs: 2, Shared: true, Pod: "b"},
	}
	reserved := func(pod types.UID, watts int64) []policy.Reservation {
		return []policy.Reservation{{UID: policy.ClaimReservationKey(pool, pod), Watts: watts, Expires: now.Add(time.Minute)}}
	}
	for _, tt := range []struct {
		name              string
		live              []policy.Charge
		reservations      []policy.Reservation
		watts, pods, gpus int64
		kept              int
	}{
		{"the most a pod on the claim costs, once", sharers, nil, 1100, 2, 3, 0},
		{"a pending pod's reservation above it", sharers, reserved("c", 1000), 1300, 2, 3, 1},
		{"a pending pod's reservation below it adds nothing", sharers, reserved("c", 400), 1100, 2, 3, 1},
		{"the pending pod keeps the claim charged when the others go", nil, reserved("c", 600), 600, 0, 0, 1},
		{"dropped once its pod is seen at that cost", sharers, reserved("b", 800), 1100, 2, 3, 0},
		{"kept while its pod is seen below it (a raise)", sharers, reserved("a", 700), 1100, 2, 3, 1},
		{"two pending pods: the larger counts", nil, append(reserved("c", 600), reserved("d", 900)...), 900, 0, 0, 2},
		{"expired", nil, []policy.Reservation{{UID: policy.ClaimReservationKey(pool, "c"), Watts: 600, Expires: now}}, 0, 0, 0, 0},
	} {
		c := policy.CountCommitted(tt.live, tt.reservations, now)
		if c.Watts != tt.watts || c.Pods != tt.pods || c.GPUs != tt.gpus || len(c.Kept) != tt.kept {
			t.Errorf("%s: %+v; want %d W, %d pods, %d GPUs, %d kept", tt.name, c, tt.watts, tt.pods, tt.gpus, tt.kept)
		}
	}
}

// A claim made for pods already admitted may not give them more GPUs than
// their admission counted, nor devices a limit may not reach; pods that
// nothing was counted or limited for hold it to nothing, outside budgets.
func TestClaimReplacement(t *testing.T) {
	gpus := func(n int64) policy.ClaimsDemand {
		return policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "r", Class: policy.DeviceClassGPU, Count: n, Devices: map[string]map[string]int{"n": {h100DRA: 8}}}})
	}
	mig := policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "m", Class: policy.DeviceClassMIG, Count: 1}})
	admin := policy.ClaimsDemandOf([]policy.ClaimRequest{{Source: "a", Class: policy.DeviceClassGPU, Count: 1, AdminAccess: true}})
	for _, tt := range []struct {
		name     string
		d        policy.ClaimsDemand
		users    []policy.ClaimUser
		budgeted bool
		want     string
	}{
		{"as admitted", gpus(2), []policy.ClaimUser{{Pod: "llm/a", GPUs: 2, Limited: true}}, true, ""},
		{"fewer", gpus(1), []policy.ClaimUser{{Pod: "llm/a", GPUs: 2}}, true, ""},
		{"more than a pod was counted", gpus(4), []policy.ClaimUser{{Pod: "llm/a", GPUs: 2}}, false,
			`c is not the claim its pods were admitted against: pod llm/a was admitted for 2 GPUs of it, and this claim can get 4; create the pods again with the claim as it is now`},
		{"GPUs for a pod counted none, in a budgeted namespace", gpus(1), []policy.ClaimUser{{Pod: "llm/a"}}, true, "pod llm/a was admitted for 0 GPUs of it"},
		{"GPUs for a pod counted none, without a limit or budget", gpus(8), []policy.ClaimUser{{Pod: "llm/a"}}, false, ""},
		{"MIG for a limited pod", mig, []policy.ClaimUser{{Pod: "llm/a", GPUs: 1, Limited: true}}, false, "pod llm/a has a power limit admitted for whole GPUs, and this claim can get MIG devices (m)"},
		{"admin access for a limited pod", admin, []policy.ClaimUser{{Pod: "llm/a", GPUs: 1, Limited: true}}, false, "asks for admin access to devices other pods hold (a)"},
		{"MIG for an unlimited pod", mig, []policy.ClaimUser{{Pod: "llm/a", GPUs: 1}}, true, ""},
		{"every pod held to it is named", gpus(3), []policy.ClaimUser{{Pod: "llm/a", GPUs: 1}, {Pod: "llm/b", GPUs: 3}, {Pod: "llm/c", GPUs: 2}}, true,
			"pod llm/a was admitted for 1 GPUs of it, and this claim can get 3; pod llm/c was admitted for 2 GPUs of it"},
	} {
		got := policy.ClaimReplacement("c", tt.d, tt.users, tt.budgeted)
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) {
			t.Errorf("%s: %q; want %q", tt.name, got, tt.want)
		}
	}
}

// ClaimGPUsOf reads one claim's count from the pod's annotation.
func TestClaimGPUsOf(t *testing.T) {
	p := pod().ResourceClaim("own", "t").NamedClaim("shared", "pool").Annotation(policy.AnnotationClaimGPUs, "own=2,shared=3").Obj()
	for claim, want := range map[string]int64{"own": 2, "shared": 3, "other": 0} {
		if got := policy.ClaimGPUsOf(p, claim); got != want {
			t.Errorf("ClaimGPUsOf(%q) = %d; want %d", claim, got, want)
		}
	}
	p.Annotations[policy.AnnotationClaimGPUs] = "shared=3,own=2"
	if got := policy.ClaimGPUsOf(p, "own"); got != 0 {
		t.Errorf("a malformed value counts %d; want 0", got)
	}
}
