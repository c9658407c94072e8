package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/dynamo-power/gpu-power/internal/hostfile"
)

// ClientAuth says who may call the webhook server. Admission requests have
// side effects (budget reservations), so with a CA configured the server
// takes only two kinds of caller, and anyone else fails the TLS handshake
// before a byte of a request is read:
//   - the API server, by a client certificate that a CA of CAFile signed for
//     client authentication (and, with Names, issued to one of them);
//   - another replica forwarding reservations, by a certificate for the
//     webhook's own serving key (the key the server presents): the replicas
//     need nothing but the serving Secret they already mount.
type ClientAuth struct {
	// CAFile is a PEM bundle of the CAs that sign the API server's client
	// certificate; empty: no client authentication, as before. It is read
	// again when it changes, so rotating the CA needs no restart.
	CAFile string
	// Names, when set, are the identities accepted from CAFile's CAs: the
	// certificate's common name or one of its DNS names must be one of them.
	Names []string
}

// caBundleLimit bounds the CA file: a bundle of a few CAs is a few KiB.
const caBundleLimit = 1 << 20

// caRecheck is how long an unchanged-looking CA file is trusted before it
// is read again anyway (a rewrite within one mtime tick keeps its stat).
const caRecheck = time.Minute

// NewServer is webhook.NewServer, with a's client authentication when
// a.CAFile is set: the server then requires a certificate (see ClientAuth),
// and its readiness check dials with the serving certificate, since one
// without a certificate is refused. It fails when the CA file cannot be
// read or holds no certificate.
func NewServer(o webhook.Options, a ClientAuth) (webhook.Server, error) {
	if a.CAFile == "" {
		return webhook.NewServer(o), nil
	}
	v := &clientVerifier{names: a.Names, cas: &caBundle{path: a.CAFile}}
	if _, err := v.cas.get(); err != nil {
		return nil, err
	}
	s := &authenticatingServer{options: o}
	o.TLSOpts = append(slices.Clone(o.TLSOpts), func(c *tls.Config) {
		// Start has set the watcher: the server serves its certificate (so
		// controller-runtime starts no watcher of its own), and a replica is
		// recognised by the key served now.
		certs := s.certs.Load()
		c.GetCertificate = certs.GetCertificate
		c.ClientAuth = tls.RequireAnyClientCert
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			return v.verify(cs, certs.GetCertificate)
		}
	})
	s.Server = webhook.NewServer(o)
	return s, nil
}

// authenticatingServer is a webhook server that requires client
// certificates. It watches the serving certificate itself, to check
// replicas against it, and dials itself with it for readiness.
type authenticatingServer struct {
	webhook.Server
	options webhook.Options
	certs   atomic.Pointer[certwatcher.CertWatcher] // set by Start
}

// Start watches the serving certificate, as controller-runtime's server
// would, then runs the server.
func (s *authenticatingServer) Start(ctx context.Context) error {
	crt, key := s.options.CertName, s.options.KeyName
	if crt == "" {
		crt = "tls.crt"
	}
	if key == "" {
		key = "tls.key"
	}
	certs, err := certwatcher.New(filepath.Join(s.options.CertDir, crt), filepath.Join(s.options.CertDir, key))
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	go func() {
		if err := certs.Start(ctx); err != nil {
			log.FromContext(ctx).Error(err, "Stopped watching the serving certificate")
		}
	}()
	s.certs.Store(certs)
	return s.Server.Start(ctx)
}

// StartedChecker passes once the server completes a TLS handshake with this
// replica's own serving certificate.
func (s *authenticatingServer) StartedChecker() healthz.Checker {
	return func(*http.Request) error {
		certs := s.certs.Load()
		if certs == nil {
			return errors.New("webhook server has not been started yet")
		}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{
			MinVersion: tls.VersionTLS12,
			// The server is ourselves: reached, not trusted.
			InsecureSkipVerify: true, //nolint:gosec // only reachability is checked
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return certs.GetCertificate(nil)
			},
		}}
		conn, err := d.Dial("tcp", net.JoinHostPort(s.options.Host, strconv.Itoa(s.options.Port)))
		if err != nil {
			return fmt.Errorf("webhook server is not reachable: %w", err)
		}
		if err := conn.Close(); err != nil {
			return fmt.Errorf("webhook server is not reachable: closing connection: %w", err)
		}
		return nil
	}
}

type clientVerifier struct {
	names []string
	cas   *caBundle
}

// verify accepts a replica (a certificate for the serving key) or the API
// server (a client certificate from the CA bundle, with an accepted name).
// It runs on resumed sessions too, so a CA removed from the bundle stops
// being accepted on the next handshake.
func (v *clientVerifier) verify(cs tls.ConnectionState, serving func(*tls.ClientHelloInfo) (*tls.Certificate, error)) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	if serving != nil {
		if own, err := serving(nil); err == nil && holdsKey(own, leaf) {
			return nil
		}
	}
	roots, err := v.cas.get()
	if err != nil {
		return err
	}
	intermediates := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return fmt.Errorf("client certificate %q: %w", leaf.Subject.CommonName, err)
	}
	// Verify accepts a leaf without extended key usages for any usage; a
	// client must be one explicitly (serving certificates issued with
	// cert-manager's default usages carry none).
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("client certificate %q is not marked for client authentication", leaf.Subject.CommonName)
	}
	// The common name alone, as kube-apiserver names an x509 client: a DNS
	// name in a certificate approved for another user is not checked by
	// whoever approves it.
	if len(v.names) == 0 || slices.Contains(v.names, leaf.Subject.CommonName) {
		return nil
	}
	return fmt.Errorf("client certificate %q is none of the accepted clients %v", leaf.Subject.CommonName, v.names)
}

// holdsKey says whether leaf is a certificate for own's key.
func holdsKey(own *tls.Certificate, leaf *x509.Certificate) bool {
	if own == nil || len(own.Certificate) == 0 {
		return false
	}
	o := own.Leaf
	if o == nil {
		var err error
		if o, err = x509.ParseCertificate(own.Certificate[0]); err != nil {
			return false
		}
	}
	return bytes.Equal(o.RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo)
}

// caBundle is a CA file, read again when its size or modification time
// changes (a Secret or ConfigMap volume swaps the file on update) or every
// caRecheck. A file that becomes unreadable or empty keeps the last good
// bundle, and says so in the log once per change.
type caBundle struct {
	path string

	mu     sync.Mutex
	pool   *x509.CertPool
	seen   string // the file's stat when last read
	readAt time.Time
}

func (b *caBundle) get() (*x509.CertPool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := "missing"
	if fi, err := os.Stat(b.path); err == nil {
		seen = fmt.Sprint(fi.Size(), fi.ModTime().UnixNano())
	}
	if b.pool != nil && seen == b.seen && time.Since(b.readAt) < caRecheck {
		return b.pool, nil
	}
	pool, err := readCABundle(b.path)
	if err != nil && b.pool == nil {
		return nil, err
	}
	// What was read, good or not, is not read again until it changes.
	b.seen, b.readAt = seen, time.Now()
	if err != nil {
		log.Log.WithName("client-auth").Error(err, "Kept the previous client CA bundle", "file", b.path)
		return b.pool, nil
	}
	if b.pool != nil && !pool.Equal(b.pool) {
		log.Log.WithName("client-auth").Info("Reloaded the client CA bundle", "file", b.path)
	}
	b.pool = pool
	return pool, nil
}

func readCABundle(path string) (*x509.CertPool, error) {
	data, err := hostfile.Read(path, caBundleLimit)
	if err != nil {
		return nil, fmt.Errorf("read client CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("client CA bundle %s: no PEM certificate", path)
	}
	return pool, nil
}
