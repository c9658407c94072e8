package webhook_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/budget"
)

// TestServingTLS checks what the webhook server offers the API server:
// TLS 1.2 or newer, and HTTP/1.1 only (HTTP/2 is off).
func TestServingTLS(t *testing.T) {
	addr := net.JoinHostPort(webhooks.wio.LocalServingHost, strconv.Itoa(webhooks.wio.LocalServingPort))
	certs := apiserverCertificate(t)
	old, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11, Certificates: certs}) //nolint:gosec // the point is an old version
	if err == nil {
		_ = old.Close()
		t.Error("the webhook server accepted TLS 1.1")
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}, Certificates: certs}) //nolint:gosec // the server, not its certificate, is under test
	if err != nil {
		t.Fatalf("TLS 1.2+ handshake: %v", err)
	}
	defer func() { _ = conn.Close() }()
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Error("the webhook server negotiated HTTP/2; it must be off")
	}
	if v := conn.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("negotiated TLS version %x; want 1.2 or newer", v)
	}
}

// TestForwardedReservationsNeedTheServingKey checks that only a replica, a
// client holding the webhook's serving key, can reserve or release watts
// through the endpoint the replicas forward reservations to: anyone else is
// answered 403 or, with client authentication on, refused in the TLS
// handshake; the API server's certificate does not make a replica.
func TestForwardedReservationsNeedTheServingKey(t *testing.T) {
	ns := budgetNamespace(t, "forward", map[string]string{budgetLabel: "forward"})
	createBudget(t, "forward", 1000, budgetLabel, "forward")
	if err := createPod(t, gpuPod("a", ns, 2, "250")); err != nil {
		t.Fatal(err)
	}
	committedBecomes(t, "forward", 500)
	serving, err := tls.LoadX509KeyPair(filepath.Join(webhooks.wio.LocalServingCertDir, "tls.crt"), filepath.Join(webhooks.wio.LocalServingCertDir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	leader := webhooks.leader()
	if leader == nil {
		t.Fatal("no replica is leading")
	}
	forward := func(certs []tls.Certificate, body string) (int, string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}}} //nolint:gosec // the client, not the server, is under test
		resp, err := c.Post("https://"+leader.addr+budget.ForwardPath, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		defer func() { _ = resp.Body.Close() }()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(out)), nil
	}
	grab := `{"budget":"forward","uid":"forged","pod":"forward/forged","watts":400,"delta":400}`
	refused := map[string][]tls.Certificate{"no client certificate": nil, "another key": {otherKey(t)}}
	if certs := apiserverCertificate(t); certs != nil {
		refused["the API server's certificate"] = certs
	}
	for name, certs := range refused {
		code, out, err := forward(certs, grab)
		switch {
		case err != nil && clientAuth.CAFile != "" && name != "the API server's certificate":
			// Refused in the handshake: not a certificate the port takes.
		case err != nil:
			t.Errorf("%s: %v; want 403", name, err)
		case code != http.StatusForbidden:
			t.Errorf("%s: %d %s; want 403", name, code, out)
		}
	}
	if st := getBudget(t, "forward").Status; st.CommittedWatts != 500 || len(st.Reservations) != 0 {
		t.Errorf("refused requests changed the budget: committed %d, reservations %+v", st.CommittedWatts, st.Reservations)
	}
	// A replica is answered; this one asks for more than is left.
	tooMuch := `{"budget":"forward","uid":"forged","pod":"forward/forged","watts":600,"delta":600}`
	if code, out, err := forward([]tls.Certificate{serving}, tooMuch); err != nil || code != http.StatusOK || out != `{"ok":false,"committed":500,"total":1000}` {
		t.Errorf("with the serving key: %d %s %v; want 200 and a denial", code, out, err)
	}
}

// otherKey is a self-signed certificate with a key of its own.
func otherKey(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "power-webhook"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
