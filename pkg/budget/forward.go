package budget

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// ForwardPath is where the writer replica takes the reservations the other
// replicas forward to it.
const ForwardPath = "/budget-reservations"

// LeaderElectionID names the Lease whose holder runs the budget reconciler
// and writes every budget's reservations.
const LeaderElectionID = "power-webhook-budget-reconciler"

// Writer describes the replica set's single budget writer: the holder of the
// leader-election Lease, whose identity carries the address the other
// replicas forward reservations to.
type Writer struct {
	// Lease is the leader-election Lease.
	Lease types.NamespacedName
	// Address is host:port where this replica's webhook server is reached by
	// the others; empty: it is never forwarded to.
	Address string
	// CertDir holds the serving certificate. A replica proves it is one by
	// holding the same key, both as forwarder and as writer.
	CertDir string
}

// Lock is the leader-election lock for the manager: a Lease whose holder
// identity ends in "@" and the replica's address.
func (w Writer) Lock(cfg *rest.Config, renewDeadline time.Duration) (resourcelock.Interface, error) {
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("leader identity: %w", err)
	}
	id := host + "_" + string(uuid.NewUUID())
	if w.Address != "" {
		id += "@" + w.Address
	}
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	// A hung request must not cost the lease.
	cfg.Timeout = max(renewDeadline/2, time.Second)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("leader election client: %w", err)
	}
	return resourcelock.New(resourcelock.LeasesResourceLock, w.Lease.Namespace, w.Lease.Name,
		cs.CoreV1(), cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id})
}

// LocalAddress is this host's first non-loopback IP with port: a pod's IP,
// where the other replicas reach its webhook server.
func LocalAddress(port int) (string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list interface addresses: %w", err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.IsGlobalUnicast() {
			return net.JoinHostPort(ip.IP.String(), fmt.Sprint(port)), nil
		}
	}
	return "", errors.New("no non-loopback address to advertise")
}

// forwardRequest and forwardResponse are the wire form of a reservation and
// of its result.
type forwardRequest struct {
	Budget  string    `json:"budget"`
	UID     types.UID `json:"uid"`
	Pod     string    `json:"pod,omitempty"`
	Watts   int64     `json:"watts"`
	Delta   int64     `json:"delta"`
	Release bool      `json:"release,omitempty"`
	// Prior is, on a release, the reservation to put back.
	Prior *powerv1alpha1.Reservation `json:"prior,omitempty"`
}

type forwardResponse struct {
	OK bool `json:"ok"`
	// Committed and Total are the budget as the denial saw it.
	Committed int64  `json:"committed,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Error     string `json:"error,omitempty"`
	// Wrote and Prior: whether a charge changed the reservation, and the one
	// it replaced.
	Wrote bool                       `json:"wrote,omitempty"`
	Prior *powerv1alpha1.Reservation `json:"prior,omitempty"`
	// Delta is what a charge added to committed watts.
	Delta int64 `json:"delta,omitempty"`
}

// Peers forwards reservations to the writer and serves those forwarded to
// this replica. Any failure to reach the writer falls back to writing here,
// which is always safe (the writes are resourceVersion-checked) and only
// costs conflicts.
type Peers struct {
	writer  Writer
	api     client.Reader
	certs   *certwatcher.CertWatcher
	http    *http.Client
	ledger  *Ledger
	metrics *Metrics

	mu     sync.Mutex
	leader string // the Lease holder's address, as last read
	readAt time.Time
}

// leaderRecheck is how long a Lease read is trusted; a failed forward
// forgets it sooner.
const leaderRecheck = 5 * time.Second

func newPeers(w Writer, api client.Reader, ledger *Ledger, m *Metrics) (*Peers, error) {
	certs, err := certwatcher.New(filepath.Join(w.CertDir, "tls.crt"), filepath.Join(w.CertDir, "tls.key"))
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	p := &Peers{writer: w, api: api, certs: certs, ledger: ledger, metrics: m}
	p.http = &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return certs.GetCertificate(nil)
			},
			// The writer is not checked against a CA and a host name (it is
			// reached by pod IP) but by holding our own key.
			InsecureSkipVerify: true, //nolint:gosec // VerifyConnection checks the peer's key
			VerifyConnection: func(cs tls.ConnectionState) error {
				return p.sameKey(cs.PeerCertificates)
			},
		},
		// A writer that is gone must cost a fallback, not the admission's
		// whole timeout.
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
		TLSHandshakeTimeout: time.Second,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
	}}
	return p, nil
}

// sameKey checks that a peer's certificate carries this replica's public key.
func (p *Peers) sameKey(chain []*x509.Certificate) error {
	own, err := p.certs.GetCertificate(nil)
	if err != nil {
		return err
	}
	leaf := own.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(own.Certificate[0]); err != nil {
			return err
		}
	}
	if len(chain) == 0 || !bytes.Equal(chain[0].RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo) {
		return errors.New("peer does not hold the webhook's serving key")
	}
	return nil
}

// forward sends r to the writer. ok is false when this replica should write
// it itself: no writer known, the writer is this replica, or it could not be
// reached.
func (p *Peers) forward(ctx context.Context, budget string, r *reserveRequest) (res reserveResult, ok bool) {
	addr := p.leaderAddress(ctx)
	if addr == "" || addr == p.writer.Address {
		return reserveResult{}, false
	}
	body, err := json.Marshal(forwardRequest{Budget: budget, UID: r.uid, Pod: r.pod, Watts: r.watts, Delta: r.delta, Release: r.op == opRelease, Prior: r.prior})
	if err != nil {
		return reserveResult{err: err}, true
	}
	resp, err := p.post(ctx, addr, body)
	if err != nil {
		if ctx.Err() != nil {
			return reserveResult{err: fmt.Errorf("reserve GPU power in budget %s: %w", budget, ctx.Err())}, true
		}
		p.forget(addr)
		p.metrics.forwarded(forwardFallback)
		log.FromContext(ctx).V(2).Info("Wrote reservation here: the budget writer did not answer", "writer", addr, "error", err.Error())
		return reserveResult{}, false
	}
	p.metrics.forwarded(forwardOK)
	if resp.Error != "" {
		return reserveResult{err: errors.New(resp.Error)}, true
	}
	return reserveResult{ok: resp.OK, state: policy.BudgetState{Name: budget, Total: resp.Total, Committed: resp.Committed}, wrote: resp.Wrote, prior: resp.Prior,
		delta: resp.Delta}, true
}

func (p *Peers) post(ctx context.Context, addr string, body []byte) (*forwardResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+ForwardPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() {
		// Read to the end, or the connection is not reused.
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("writer answered %s", resp.Status)
	}
	var out forwardResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("decode the writer's answer: %w", err)
	}
	return &out, nil
}

// leaderAddress is the writer's address from the Lease, read at most every
// leaderRecheck; empty when the holder advertises none.
func (p *Peers) leaderAddress(ctx context.Context) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.readAt) < leaderRecheck {
		return p.leader
	}
	var lease coordinationv1.Lease
	p.leader = ""
	if err := p.api.Get(ctx, p.writer.Lease, &lease); err == nil && lease.Spec.HolderIdentity != nil {
		if i := strings.LastIndex(*lease.Spec.HolderIdentity, "@"); i >= 0 {
			p.leader = (*lease.Spec.HolderIdentity)[i+1:]
		}
	}
	p.readAt = time.Now()
	return p.leader
}

// forget drops a writer address that failed, so the next reservation reads
// the Lease again.
func (p *Peers) forget(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.leader == addr {
		p.readAt = time.Time{}
	}
}

// ServeHTTP takes a forwarded reservation into this replica's batches. It
// answers 403 to a caller that does not hold the serving key: a reservation
// and, worse, a release must come from a replica.
func (p *Peers) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if r.TLS == nil || p.sameKey(r.TLS.PeerCertificates) != nil {
		http.Error(w, "not a power-webhook replica", http.StatusForbidden)
		return
	}
	var req forwardRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil || req.Budget == "" || req.UID == "" {
		http.Error(w, "malformed reservation", http.StatusBadRequest)
		return
	}
	// A forwarded request charges or releases; only this replica's own
	// reconciler recounts.
	ask := &reserveRequest{op: opCharge, uid: req.UID, pod: req.Pod, watts: req.Watts, delta: req.Delta, prior: req.Prior}
	if req.Release {
		ask.op = opRelease
	}
	res := p.ledger.enqueue(r.Context(), req.Budget, ask)
	out := forwardResponse{OK: res.ok, Committed: res.state.Committed, Total: res.state.Total, Wrote: res.wrote, Prior: res.prior, Delta: res.delta}
	if res.err != nil {
		out.Error = res.err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
