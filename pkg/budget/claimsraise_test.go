package budget

import (
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// An update that raises a claims pod's cost on a named claim (its limit
// removed) always asks the writer, which decides what it adds: a replica
// whose cache still shows a pod on the claim the writer has released does
// not let the raise through for nothing.
func TestClaimRaiseOnAStaleReplicaIsCharged(t *testing.T) {
	b, c := ledger(t, 0)
	claims := policy.ClaimsDemand{Resolved: true}
	admit := func(l *Ledger, op admissionv1.Operation, p, old *corev1.Pod) string {
		t.Helper()
		d, err := l.Admit(t.Context(), op, p, old, l.Cluster, claims, false)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	recount := recounter(t, b, c)
	// x: 1 GPU of claim c1, no limit: the catalog's highest default per GPU.
	x := testpod.MakePod("x", "llm").UID("pod-x").NamedClaim("gpus", "c1").Annotation(policy.AnnotationClaimGPUs, "gpus=1")
	unlimited := b.Catalog.CostOf(x.Obj(), b.Cluster, true).Watts
	t.Logf("an unlimited pod on 1 GPU of the claim costs %d W", unlimited)
	if unlimited <= 250 || unlimited > 1000 {
		// The default catalog is fixed data: a change to it must rebuild
		// the scenario, not skip it.
		t.Fatalf("precondition: the default catalog's highest default gives %d W; the scenario needs 250 < it <= 1000", unlimited)
	}
	// x is admitted, created, then deleted; the writer's recount releases it.
	if d := admit(b, admissionv1.Create, x.Obj(), nil); d != "" {
		t.Fatalf("x: %s", d)
	}
	if err := c.Create(t.Context(), x.Obj()); err != nil {
		t.Fatal(err)
	}
	// y: 1 GPU of claim c1 at 250 W, admitted while x is on it.
	y := testpod.MakePod("y", "llm").UID("pod-y").NamedClaim("gpus", "c1").Limit("250").Stamp("250").
		Annotation(policy.AnnotationClaimGPUs, "gpus=1")
	if d := admit(b, admissionv1.Create, y.Obj(), nil); d != "" {
		t.Fatalf("y: %s", d)
	}
	if err := c.Create(t.Context(), y.Obj()); err != nil {
		t.Fatal(err)
	}
	// Another replica's cache sees y and x, and misses x's deletion.
	stale := podindex.New()
	if err := stale.Replace([]any{y.Obj(), x.Obj()}, "1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(t.Context(), x.Obj()); err != nil {
		t.Fatal(err)
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 250 {
		t.Fatalf("committed %d W after x's deletion; want 250 (y)", st.CommittedWatts)
	}
	// 750 W taken by another pod: the budget is full at 1000 W.
	z := testpod.MakePod("z", "llm").UID("pod-z").GPU(3).NodeName("h100-0").Limit("250").Stamp("250")
	if d := admit(b, admissionv1.Create, z.Obj(), nil); d != "" {
		t.Fatalf("z: %s", d)
	}
	if err := c.Create(t.Context(), z.Obj()); err != nil {
		t.Fatal(err)
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts != 1000 {
		t.Fatalf("committed %d W; want 1000 (y's claim 250, z 750)", st.CommittedWatts)
	}

	// y's limit is removed, admitted on the other replica (not the writer),
	// whose cache still shows x on c1.
	replica := &Ledger{Cache: b.Cache, Pods: stale, API: b.API, Client: b.Client, Catalog: b.Catalog, Cluster: b.Cluster,
		TTL: b.TTL, Attempts: b.Attempts, Now: b.Now, Leading: func() bool { return false }}
	var live corev1.Pod
	if err := c.Get(t.Context(), types.NamespacedName{Namespace: "llm", Name: "y"}, &live); err != nil {
		t.Fatal(err)
	}
	raised := live.DeepCopy()
	delete(raised.Annotations, policy.AnnotationPowerLimit)
	delete(raised.Annotations, policy.AnnotationPowerLimitValidated)
	if got := b.Catalog.CostOf(raised, b.Cluster, true).Watts; got != unlimited {
		t.Fatalf("precondition: y without its limit costs %d W; want %d", got, unlimited)
	}
	d := admit(replica, admissionv1.Update, raised, &live)
	t.Logf("y's limit removed on the stale replica: denial %q, committed %d W", d, budgetStatus(t, c).CommittedWatts)
	if d == "" {
		if err := c.Update(t.Context(), raised); err != nil {
			t.Fatal(err)
		}
	}
	recount()
	if st := budgetStatus(t, c); st.CommittedWatts > 1000 {
		t.Errorf("committed %d W of a 1000 W budget after y's raise to %d W on a replica whose cache showed x (released) on the claim: "+
			"the raise must ask the writer, not trust that cache", st.CommittedWatts, unlimited)
	}
}
