package webhook

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// A raise that an existing reservation already covers (a pod created at
// 2x250 W, lowered to 2x200 W, raised back just before the creation's
// reservation expires) renews that reservation, as a new one would count:
// otherwise the reconciler, whose cache still shows 400 W, would drop it at
// expiry and 100 W of an admitted raise would not be counted.
func TestRaiseBackToAHeldReservationRenewsIt(t *testing.T) {
	b, c := ledger(t, 0)
	b.TTL = 35 * time.Second
	now := time.Now()
	b.Now = func() time.Time { return now }
	created := testpod.MakePod("a", "llm").UID("pod-1").GPU(2).NodeName("h100-0").Limit("250").Obj()
	if d, err := b.Admit(t.Context(), admissionv1.Create, created, nil, b.Cluster, false); err != nil || d != "" {
		t.Fatalf("create: %q %v", d, err)
	}
	lowered := created.DeepCopy()
	lowered.Annotations[policy.AnnotationPowerLimit] = "200"
	if d, err := b.Admit(t.Context(), admissionv1.Update, lowered, created, b.Cluster, false); err != nil || d != "" {
		t.Fatalf("lower: %q %v", d, err)
	}
	// The lowered pod is stored and in the cache.
	stored := lowered.DeepCopy()
	stored.Status.Phase = "Running"
	if err := c.Create(t.Context(), stored); err != nil {
		t.Fatal(err)
	}
	// 33 s after the creation: the raise back to 250 W is admitted.
	created0 := now
	now = now.Add(b.TTL - 2*time.Second)
	raised := lowered.DeepCopy()
	raised.Annotations[policy.AnnotationPowerLimit] = "250"
	if d, err := b.Admit(t.Context(), admissionv1.Update, raised, lowered, b.Cluster, false); err != nil || d != "" {
		t.Fatalf("raise: %q %v", d, err)
	}
	st := statusOf(t, c, "cluster")
	if len(st.Reservations) == 1 && !st.Reservations[0].Expires.After(now.Add(b.TTL-2*time.Second)) {
		t.Errorf("the admitted raise is covered by a reservation expiring %v after its admission; want ~TTL (%v)",
			st.Reservations[0].Expires.Sub(now), b.TTL)
	}
	// 2.1 s later (the creation's reservation has expired) the reconciler
	// runs; the raise is still in flight (other validating webhooks, quota,
	// etcd: the 35 s the TTL is sized for).
	now = created0.Add(b.TTL + 100*time.Millisecond)
	r := &BudgetReconciler{Client: c, API: c, Budgets: b, Catalog: b.Catalog, Cluster: b.Cluster,
		Resync: time.Minute, Now: func() time.Time { return now }, PodsSeen: func() string { return caughtUp }}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{NamespacedName: types.NamespacedName{Name: "cluster"}}); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, c, "cluster"); st.CommittedWatts < 500 {
		t.Errorf("after the reconciler: committed %d W; want >= 500 W (the admitted raise, in flight)", st.CommittedWatts)
	}
	other := testpod.MakePod("b", "llm").UID("pod-2").GPU(2).NodeName("h100-0").Limit("300").Obj()
	if d, err := b.Admit(t.Context(), admissionv1.Create, other, nil, b.Cluster, false); err == nil && d == "" {
		t.Errorf("a 600 W pod was admitted into a 1000 W budget whose admitted pods hold 500 W: 1100 W committed")
	}
}

// --client-name matches the common name only, as kube-apiserver names x509
// clients: a cluster-CA user certificate approved as CN=alice that also
// carries the DNS name kube-apiserver-power-webhook-client is not the API
// server.
func TestClientNameIsTheCommonNameOnly(t *testing.T) {
	ca := newTestCA(t, "kubernetes")
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: "alice", Organization: []string{"team-a"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames: []string{"kube-apiserver-power-webhook-client"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	v := verifierFor(t, ca)
	if err := v.verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, nil); err == nil {
		t.Error("a client certificate for CN=alice was accepted as the API server because of a DNS SAN")
	}
}

// A client certificate must carry the client-auth extended key usage: x509
// Verify accepts a leaf with none for any usage, and certificates issued with
// cert-manager's default usages carry none.
func TestClientCertificateMustBeMarkedForClientAuth(t *testing.T) {
	ca := newTestCA(t, "shared-ca")
	c := ca.issue(t, "kube-apiserver-power-webhook-client", nil) // no ExtKeyUsage
	leaf, _ := x509.ParseCertificate(c.Certificate[0])
	v := verifierFor(t, ca)
	if err := v.verify(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, nil); err == nil {
		t.Error("a certificate with no extended key usage (not issued for client authentication) was accepted")
	}
}

func verifierFor(t *testing.T, ca *testCA) *clientVerifier {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(path, ca.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	return &clientVerifier{names: []string{"kube-apiserver-power-webhook-client"}, cas: &caBundle{path: path}}
}
