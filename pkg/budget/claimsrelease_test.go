package budget

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A pod on two named claims is charged for the first and denied on the
// second, so the first is released. A second pod admitted on the first
// claim meanwhile was charged nothing, as the first pod's pending
// reservation held the claim's watts: the release leaves them in committed,
// and a third pod finds no room the second still needs.
func TestClaimReleaseKeepsWhatAnotherSharerRelies(t *testing.T) {
	b, c := ledger(t, 0)
	// 500 W of the 1000 W taken by a pod of its own.
	own := testpod.MakePod("own", "llm").UID("pod-own").GPU(2).NodeName("h100-0").Limit("250").Stamp("250")
	if d, err := b.Admit(t.Context(), admissionv1.Create, own.Obj(), nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("own pod: %q %v", d, err)
	}
	if err := c.Create(t.Context(), own.Obj()); err != nil {
		t.Fatal(err)
	}
	c1 := policy.ClaimKey("llm", "c1")

	// Pod p2 (claims c1 and c2, 2 GPUs each at 250 W): c1 is charged first...
	first := b.reserve(t.Context(), "cluster", &reserveRequest{uid: policy.ClaimReservationKey(c1, "pod-p2"), pod: "llm/p2", watts: 500, delta: 500})
	if !first.ok || !first.wrote || first.delta != 500 {
		t.Fatalf("p2's c1 charge: %+v", first)
	}
	// ...meanwhile p3, on c1 only, is admitted: p2's pending reservation
	// holds the claim, so p3 adds nothing.
	p3 := testpod.MakePod("p3", "llm").UID("pod-p3").NamedClaim("gpus", "c1").Limit("250").Stamp("250").
		Annotation(policy.AnnotationClaimGPUs, "gpus=2")
	if d, err := b.Admit(t.Context(), admissionv1.Create, p3.Obj(), nil, b.Cluster, policy.ClaimsDemand{Resolved: true}, false); err != nil || d != "" {
		t.Fatalf("p3 on c1: %q %v", d, err)
	}
	if err := c.Create(t.Context(), p3.Obj()); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 {
		t.Fatalf("committed %d W; want 1000 (own 500, c1 500 once)", st.CommittedWatts)
	}
	// ...then p2's c2 charge is denied (the budget is full), and Admit
	// releases c1 with the delta it added.
	deny := b.reserve(t.Context(), "cluster", &reserveRequest{uid: policy.ClaimReservationKey(policy.ClaimKey("llm", "c2"), "pod-p2"), pod: "llm/p2", watts: 500, delta: 500})
	if deny.ok {
		t.Fatalf("p2's c2 charge into a full budget: %+v", deny)
	}
	rel := b.reserve(t.Context(), "cluster", &reserveRequest{op: opRelease, uid: policy.ClaimReservationKey(c1, "pod-p2"), watts: 500, delta: first.delta, prior: first.prior})
	if !rel.ok {
		t.Fatalf("release: %+v", rel)
	}
	st := budgetStatus(t, c)
	t.Logf("after the release: committed %d W, reservations %+v", st.CommittedWatts, st.Reservations)
	if st.CommittedWatts < 1000 {
		t.Errorf("committed %d W after p2's release, while p3 is on c1 (500 W, charged nothing for it): the release took off watts p3's charge relied on",
			st.CommittedWatts)
	}
	// A 500 W pod takes the room the release left.
	p4 := testpod.MakePod("p4", "llm").UID("pod-p4").GPU(2).NodeName("h100-0").Limit("250").Stamp("250")
	d, err := b.Admit(t.Context(), admissionv1.Create, p4.Obj(), nil, b.Cluster, policy.ClaimsDemand{}, false)
	if err != nil {
		t.Fatal(err)
	}
	if d == "" {
		if err := c.Create(t.Context(), p4.Obj()); err != nil {
			t.Fatal(err)
		}
	}
	recount := recounter(t, b, c)
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts > 1000 {
		t.Errorf("recounted: %d W committed of a 1000 W budget (p4 admitted: %v)", st.CommittedWatts, d == "")
	}
}
