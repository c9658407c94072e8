package webhook

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// testCA signs certificates for the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial atomic.Int64

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a certificate for key (a new one when nil) with the usages.
func (ca *testCA) issue(t testing.TB, cn string, key *ecdsa.PrivateKey, usages ...x509.ExtKeyUsage) tls.Certificate {
	t.Helper()
	if key == nil {
		var err error
		if key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages,
		DNSNames: []string{cn}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func writeKeyPair(t testing.TB, dir string, c tls.Certificate) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{
		"tls.crt": {Type: "CERTIFICATE", Bytes: c.Certificate[0]},
		"tls.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// writeAtomically replaces path as a Secret volume does: a new file renamed
// over the old one.
func writeAtomically(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestClientAuth: with a client CA, the webhook port serves the API server
// (a client certificate from that CA, with an accepted name) and the other
// replicas (a certificate for the serving key); everyone else is refused in
// the TLS handshake, before the handler runs.
func TestClientAuth(t *testing.T) {
	dir := t.TempDir()
	servingCA, apiCA, otherCA := newTestCA(t, "power-webhook-ca"), newTestCA(t, "apiserver-client-ca"), newTestCA(t, "other-ca")
	servingKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serving := servingCA.issue(t, "power-webhook.dynamo-system.svc", servingKey)
	writeKeyPair(t, dir, serving)
	caFile := filepath.Join(dir, "client-ca.crt")
	writeAtomically(t, caFile, apiCA.pem)

	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	srv, err := NewServer(ServerOptions(host, port, dir), ClientAuth{CAFile: caFile, Names: []string{"kube-apiserver-webhook-client"}})
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int64
	srv.Register("/validate-pods", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		served.Add(1)
		_, _ = io.WriteString(w, "admitted")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = srv.Start(ctx) }()
	ready := srv.StartedChecker()
	poll.Eventually(t, 10*time.Second, "the webhook server's readiness check", func() (bool, string) {
		err := ready(nil)
		return err == nil, fmt.Sprint(err)
	})

	post := func(certs ...tls.Certificate) error {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, Certificates: certs, //nolint:gosec // the server's client check is under test
		}}}
		resp, err := c.Post("https://"+addr+"/validate-pods", "application/json", strings.NewReader(`{}`))
		if err != nil {
			return err
		}
		defer func() { _ = resp.Body.Close() }()
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	apiserver := apiCA.issue(t, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageClientAuth)
	for _, tt := range []struct {
		name   string
		certs  []tls.Certificate
		served bool
	}{
		{"no client certificate: refused", nil, false},
		{"another CA's certificate with the accepted name: refused", []tls.Certificate{otherCA.issue(t, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageClientAuth)}, false},
		{"the API server's CA, a name not accepted: refused", []tls.Certificate{apiCA.issue(t, "someone-else", nil, x509.ExtKeyUsageClientAuth)}, false},
		{"the API server's CA, a serving-only certificate: refused", []tls.Certificate{apiCA.issue(t, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageServerAuth)}, false},
		{"the serving CA, another key: refused", []tls.Certificate{servingCA.issue(t, "power-webhook.dynamo-system.svc", nil)}, false},
		{"the API server's client certificate: served", []tls.Certificate{apiserver}, true},
		{"a replica, with the serving certificate: served", []tls.Certificate{serving}, true},
	} {
		before := served.Load()
		err := post(tt.certs...)
		if got := served.Load() > before; got != tt.served || (err == nil) != tt.served {
			t.Errorf("%s: served %v, error %v", tt.name, got, err)
		}
	}

	// The CA is rotated: the bundle is read again on the next handshake.
	newCA := newTestCA(t, "apiserver-client-ca-2")
	writeAtomically(t, caFile, newCA.pem)
	if err := post(apiserver); err == nil {
		t.Error("a certificate from the CA removed from the bundle was still accepted")
	}
	if err := post(newCA.issue(t, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageClientAuth)); err != nil {
		t.Errorf("a certificate from the new CA: %v", err)
	}
	// A bundle that breaks keeps the last good one.
	writeAtomically(t, caFile, []byte("not a certificate"))
	if err := post(newCA.issue(t, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageClientAuth)); err != nil {
		t.Errorf("after a broken bundle was written: %v", err)
	}
}

func TestNewServerRefusesAnUnusableCAFile(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.crt")
	if err := os.WriteFile(empty, []byte("# no certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.crt")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct{ file, want string }{
		"missing file": {filepath.Join(dir, "nope.crt"), "read client CA bundle"},
		"no PEM":       {empty, "no PEM certificate"},
		"a folder":     {dir, "not a regular file"},
		"a FIFO":       {fifo, "not a regular file"}, // refused at once, never waited on
		"a device":     {"/dev/zero", "not a regular file"},
	} {
		if _, err := NewServer(ServerOptions("127.0.0.1", 0, dir), ClientAuth{CAFile: tt.file}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v; want it to contain %q", name, err, tt.want)
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}

var _ webhook.Server = (*authenticatingServer)(nil)

// BenchmarkHandshake is the price of client authentication: one new TLS
// connection and one request per op (the API server reuses its connections,
// so this is paid per connection, not per admission), without a client CA
// and with one.
func BenchmarkHandshake(b *testing.B) {
	dir := b.TempDir()
	servingCA, apiCA := newTestCA(b, "power-webhook-ca"), newTestCA(b, "apiserver-client-ca")
	writeKeyPair(b, dir, servingCA.issue(b, "power-webhook.dynamo-system.svc", nil))
	caFile := filepath.Join(dir, "client-ca.crt")
	writeAtomically(b, caFile, apiCA.pem)
	apiserver := apiCA.issue(b, "kube-apiserver-webhook-client", nil, x509.ExtKeyUsageClientAuth)
	for _, bb := range []struct {
		name string
		auth ClientAuth
	}{
		{"client-auth=off", ClientAuth{}},
		{"client-auth=on", ClientAuth{CAFile: caFile, Names: []string{"kube-apiserver-webhook-client"}}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			addr, err := freeAddr()
			if err != nil {
				b.Fatal(err)
			}
			host, portStr, _ := net.SplitHostPort(addr)
			port, _ := strconv.Atoi(portStr)
			srv, err := NewServer(ServerOptions(host, port, dir), bb.auth)
			if err != nil {
				b.Fatal(err)
			}
			srv.Register("/validate-pods", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = srv.Start(ctx) }()
			poll.Eventually(b, 10*time.Second, "the webhook server's readiness check", func() (bool, string) {
				err := srv.StartedChecker()(nil)
				return err == nil, fmt.Sprint(err)
			})
			cfg := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{apiserver}} //nolint:gosec // benchmark
			b.ResetTimer()
			for b.Loop() {
				tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
				resp, err := (&http.Client{Transport: tr}).Post("https://"+addr+"/validate-pods", "application/json", strings.NewReader(`{}`))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
		})
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
