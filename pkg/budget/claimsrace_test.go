package budget

import (
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// What the pods on a named claim already charge comes off a new sharer's
// charge only where the batch is written, from the writer's own caught-up
// index: a replica whose cache still shows a sharer the writer has released
// asks for the whole charge, and a full budget denies it.
func TestStaleCacheNeverLowersASharersCharge(t *testing.T) {
	a := sharerPod("a", "pod-a", "250").Obj()
	writer, c := ledger(t, 0, a)
	recount := recounter(t, writer, c)
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 500 {
		t.Fatalf("committed %d W; want the claim's 500 W", st.CommittedWatts)
	}

	// Another replica, whose pod cache has not seen a's deletion yet.
	stale := podindex.New()
	if err := stale.Add(a.DeepCopy()); err != nil {
		t.Fatal(err)
	}
	replica := &Ledger{Cache: c, Pods: stale, API: c, Client: c, Catalog: writer.Catalog, Cluster: writer.Cluster,
		TTL: time.Minute, Attempts: 5, Now: time.Now, Leading: func() bool { return false }}

	// a goes; the writer releases its 500 W, and a 1000 W pod takes the room.
	if err := c.Delete(t.Context(), a); err != nil {
		t.Fatal(err)
	}
	recount()
	big := testpod.MakePod("big", "llm").UID("pod-big").GPU(4).NodeName("h100-0").Limit("250").Stamp("250")
	if d, err := writer.Admit(t.Context(), admissionv1.Create, big.Obj(), nil, writer.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("1000 W pod into the emptied budget: %q %v", d, err)
	}
	if err := c.Create(t.Context(), big.Obj()); err != nil {
		t.Fatal(err)
	}
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 {
		t.Fatalf("committed %d W; want 1000 (full)", st.CommittedWatts)
	}

	// b, on the now uncharged claim, reaches the stale replica.
	b := sharerPod("b", "pod-b", "250")
	d, err := replica.Admit(t.Context(), admissionv1.Create, b.Obj(), nil, writer.Cluster, policy.ClaimsDemand{Resolved: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	if d == "" {
		if err := c.Create(t.Context(), b.Obj()); err != nil {
			t.Fatal(err)
		}
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts > 1000 {
		t.Errorf("committed %d W of a 1000 W budget (b admitted: %v): a sharer's 0-delta reservation, decided on a stale cache, overcommitted the budget",
			st.CommittedWatts, d == "")
	}
}

// Two pods created together on one named claim nobody charges yet (a
// Deployment's replicas): the second's charge is the first's pending
// reservation, so it adds nothing and is not denied.
func TestConcurrentSharersAreChargedOnce(t *testing.T) {
	b, c := ledger(t, 0)
	own := testpod.MakePod("own", "llm").UID("pod-own").GPU(2).NodeName("h100-0").Limit("250").Stamp("250")
	if d, err := b.Admit(t.Context(), admissionv1.Create, own.Obj(), nil, b.Cluster, policy.ClaimsDemand{}, false); err != nil || d != "" {
		t.Fatalf("500 W pod: %q %v", d, err)
	}
	for _, uid := range []string{"pod-r1", "pod-r2"} {
		p := sharerPod(uid, uid, "250").Obj()
		d, err := b.Admit(t.Context(), admissionv1.Create, p, nil, b.Cluster, policy.ClaimsDemand{Resolved: true}, false)
		if err != nil {
			t.Fatal(err)
		}
		if d != "" {
			t.Errorf("%s, a replica on the 500 W claim the other replica (in flight) already reserved, into 500 W of room: denied %q", uid, d)
		}
	}
	if st := budgetStatus(t, c); st.CommittedWatts > 1000 {
		t.Errorf("committed %d W", st.CommittedWatts)
	}
}
