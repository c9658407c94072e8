package webhook_test

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
)

// apiserverCertificate is the API server's client certificate for the
// webhook; none when the suite runs without client authentication.
func apiserverCertificate(t *testing.T) []tls.Certificate {
	t.Helper()
	if clientAuth.CAFile == "" {
		return nil
	}
	c, err := tls.LoadX509KeyPair(apiserverAuth.Cert, apiserverAuth.Key)
	if err != nil {
		t.Fatal(err)
	}
	return []tls.Certificate{c}
}

// TestAdmissionNeedsTheAPIServersCertificate is issue 11's attack: a
// hand-made AdmissionReview (CREATE, not dry-run) posted straight to the
// webhook port. Without a client certificate, or with one from a CA the
// webhook does not trust, the TLS handshake is refused and nothing is
// reserved; the API server's own calls, which present its certificate, are
// admitted as always.
func TestAdmissionNeedsTheAPIServersCertificate(t *testing.T) {
	if clientAuth.CAFile == "" {
		t.Skip("POWER_WEBHOOK_CLIENT_AUTH=off")
	}
	const budget = "client-auth"
	ns := budgetNamespace(t, budget, map[string]string{budgetLabel: budget})
	createBudget(t, budget, 5600, budgetLabel, budget)
	// A pod through the API server: its calls present the API server's
	// certificate and are admitted as always.
	if err := createPod(t, gpuPod("real", ns, 2, "250")); err != nil {
		t.Fatalf("a pod created through the API server: %v", err)
	}
	committedBecomes(t, budget, 500)
	other, err := admissionauth.OtherCA()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(webhooks.wio.LocalServingHost, strconv.Itoa(webhooks.wio.LocalServingPort))
	review := func(uid string) string {
		p := gpuPod("forged-"+uid, ns, 8, "600")
		p.UID = types.UID(uid)
		p.Annotations[policy.AnnotationPowerLimitValidated] = "600"
		raw, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		r, err := json.Marshal(admissionv1.AdmissionReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
			Request: &admissionv1.AdmissionRequest{
				UID: types.UID("review-" + uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
				Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
				Namespace: ns, Name: p.Name, Operation: admissionv1.Create, DryRun: new(bool),
				Object: runtime.RawExtension{Raw: raw},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		return string(r)
	}
	post := func(uid string, certs ...tls.Certificate) (string, error) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, Certificates: certs, //nolint:gosec // the webhook's check of its client is under test
		}}}
		resp, err := c.Post("https://"+addr+powerwebhook.ValidatePath, "application/json", strings.NewReader(review(uid)))
		if err != nil {
			return "", err
		}
		defer func() { _ = resp.Body.Close() }()
		out, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%s %s", resp.Status, out), nil
	}
	for uid, certs := range map[string][]tls.Certificate{"no-certificate": nil, "another-ca": {other}} {
		if out, err := post(uid, certs...); err == nil {
			t.Errorf("%s: the webhook answered %s; want the TLS handshake refused", uid, out)
		}
	}
	if st := getBudget(t, budget).Status; st.CommittedWatts != 500 || len(st.Reservations) != 0 {
		t.Errorf("refused requests reserved watts: committed %d, reservations %+v", st.CommittedWatts, st.Reservations)
	}

	// The same review with the API server's certificate is answered and
	// reserves: the refusals above were for the caller, not the review.
	// (Whoever holds that certificate is the API server; how soon such a
	// reservation stops counting is TestBudgetReleaseAndExpiry's.)
	if out, err := post("apiserver", apiserverCertificate(t)...); err != nil || !strings.Contains(out, `"allowed":true`) {
		t.Fatalf("with the API server's certificate: %s, %v; want it admitted", out, err)
	}
	st := getBudget(t, budget).Status
	if len(st.Reservations) != 1 || st.Reservations[0].PodUID != "apiserver" || st.CommittedWatts != 5300 {
		t.Errorf("after the API server's call: committed %d, reservations %+v; want 500 W and its 4800 W", st.CommittedWatts, st.Reservations)
	}
}
