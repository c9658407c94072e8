package budget

import (
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// sharerPod is a pod on 2 GPUs of named claim "shared", with a stamped
// limit and its claims' counts as the webhook writes them.
func sharerPod(name, uid, limit string) *testpod.Wrapper {
	return testpod.MakePod(name, "llm").UID(uid).NamedClaim("gpus", "shared").Limit(limit).Stamp(limit).
		Annotation(policy.AnnotationClaimGPUs, "gpus=2")
}

// A named ResourceClaim's GPUs are charged once, to the claim, at the most
// any pod using it costs; a claim made from a pod's template is the pod's
// own. The webhook writes the counts on the pod (AnnotationClaimGPUs).
func TestSharedClaimIsChargedOnce(t *testing.T) {
	b, c := ledger(t, 0)
	claims := policy.ClaimsDemand{Resolved: true}
	admit := func(p *testpod.Wrapper) string {
		t.Helper()
		denial, err := b.Admit(t.Context(), admissionv1.Create, p.Obj(), nil, b.Cluster, claims, false)
		if err != nil {
			t.Fatal(err)
		}
		if denial == "" {
			if err := c.Create(t.Context(), p.Obj()); err != nil {
				t.Fatal(err)
			}
		}
		return denial
	}
	if d := admit(sharerPod("a", "pod-a", "250")); d != "" {
		t.Fatalf("first sharer: %s", d)
	}
	own := testpod.MakePod("c", "llm").UID("pod-c").ResourceClaim("gpus", "two").Limit("250").Stamp("250").Annotation(policy.AnnotationClaimGPUs, "gpus=2")
	if d := admit(own); d != "" {
		t.Fatalf("template claims: %s", d)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 {
		t.Fatalf("committed %d W; want 500 for the shared claim and 500 for the template's", st.CommittedWatts)
	}
	// The budget is full, and a second pod on the claim adds nothing.
	if d := admit(sharerPod("b", "pod-b", "250")); d != "" {
		t.Fatalf("second sharer at the same limit: %s", d)
	}
	// A higher limit on the claim's GPUs is charged the difference.
	if d := admit(sharerPod("d", "pod-d", "300")); !strings.Contains(d, `exceeded GPU power budget "cluster": requested 100 W more (now 600 W (2 GPUs x 300 W))`) {
		t.Fatalf("sharer at a higher limit: %q; want denied for 100 W more", d)
	}
	recount := recounter(t, b, c)
	recount()
	st := budgetStatus(t, c)
	if st.CommittedWatts != 1000 || st.Pods != 3 || st.GPUs != 4 || len(st.Reservations) != 0 {
		t.Errorf("recounted: %d W, %d pods, %d GPUs, reservations %+v; want 1000 W, 3 pods, 4 GPUs, none", st.CommittedWatts, st.Pods, st.GPUs, st.Reservations)
	}
	// A pod admitted on the claim keeps it charged until the cache shows
	// it, even when every pod the cache shows on it goes first.
	late := sharerPod("e", "pod-e", "250")
	if d, err := b.Admit(t.Context(), admissionv1.Create, late.Obj(), nil, b.Cluster, claims, false); err != nil || d != "" {
		t.Fatalf("sharer not yet stored: %q %v", d, err)
	}
	for _, name := range []string{"a", "b"} {
		if err := c.Delete(t.Context(), testpod.MakePod(name, "llm").Obj()); err != nil {
			t.Fatal(err)
		}
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 || len(st.Reservations) != 1 {
		t.Fatalf("the cache's pods on the claim gone, one admitted not yet seen: %d W, reservations %+v; want the claim's 500 W kept by its reservation",
			st.CommittedWatts, st.Reservations)
	}
	if err := c.Create(t.Context(), late.Obj()); err != nil {
		t.Fatal(err)
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 || len(st.Reservations) != 0 || st.Pods != 2 {
		t.Fatalf("once seen: %d W, %d pods, reservations %+v; want 1000 W through the pods, none left", st.CommittedWatts, st.Pods, st.Reservations)
	}
	// The claim stays charged while one pod uses it.
	if err := c.Delete(t.Context(), testpod.MakePod("c", "llm").Obj()); err != nil {
		t.Fatal(err)
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 500 || st.Pods != 1 {
		t.Errorf("with one pod left, on the claim: %d W, %d pods; want the claim's 500 W", st.CommittedWatts, st.Pods)
	}
}

// Claims whose GPUs cannot be counted are refused where a budget applies,
// saying why; a pod without a budget is not.
func TestUncountableClaimsAreRefusedUnderABudget(t *testing.T) {
	b, _ := ledger(t, 0)
	p := testpod.MakePod("a", "llm").UID("pod-a").ResourceClaim("gpus", "gone").Obj()
	for _, tc := range []struct {
		claims policy.ClaimsDemand
		want   string
	}{
		{policy.ClaimsDemand{}, "its resourceClaims (this cluster serves no resource.k8s.io/v1 to read them from)"},
		{policy.ClaimsDemand{Resolved: true, Problems: []string{`claim "gpus": not found`}}, `its resourceClaims (claim "gpus": not found)`},
	} {
		d, err := b.Admit(t.Context(), admissionv1.Create, p, nil, b.Cluster, tc.claims, false)
		if err != nil || !strings.Contains(d, `GPU power budget "cluster" selects the namespace, and the GPUs the pod may get through `+tc.want+" cannot be charged") {
			t.Errorf("%+v: %q %v; want refused through %s", tc.claims, d, err, tc.want)
		}
	}
}
