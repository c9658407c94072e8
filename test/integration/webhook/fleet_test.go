package webhook_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// fleet runs webhook replicas in this process, each a whole manager with its
// own caches, ledger and leader election, behind one TCP round-robin address
// (the one the webhook configurations point at), as a Service spreads them.
type fleet struct {
	ctx    context.Context
	scheme *runtime.Scheme
	wio    *envtest.WebhookInstallOptions

	mu       sync.Mutex
	replicas []*replica
	next     int
	listener net.Listener
}

type replica struct {
	name     string
	addr     string // webhook server
	mgr      manager.Manager
	registry *prometheus.Registry
	cancel   context.CancelFunc
	stopped  chan error    // mgr.Start's result
	exited   chan struct{} // closed when mgr.Start returned
}

func newFleet(ctx context.Context, scheme *runtime.Scheme, wio *envtest.WebhookInstallOptions) (*fleet, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(wio.LocalServingHost, strconv.Itoa(wio.LocalServingPort)))
	if err != nil {
		return nil, fmt.Errorf("listen on the webhook address: %w", err)
	}
	f := &fleet{ctx: ctx, scheme: scheme, wio: wio, listener: l}
	go f.serve()
	return f, nil
}

func (f *fleet) serve() {
	for {
		conn, err := f.listener.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		if len(f.replicas) == 0 {
			f.mu.Unlock()
			_ = conn.Close()
			continue
		}
		backend := f.replicas[f.next%len(f.replicas)].addr
		f.next++
		f.mu.Unlock()
		go proxy(conn, backend)
	}
}

func proxy(client net.Conn, backend string) {
	defer func() { _ = client.Close() }()
	server, err := net.Dial("tcp", backend)
	if err != nil {
		return
	}
	defer func() { _ = server.Close() }()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(server, client); done <- struct{}{} }()
	go func() { _, _ = io.Copy(client, server); done <- struct{}{} }()
	<-done
}

// start runs one more replica and waits until it is ready.
func (f *fleet) start() error {
	webhookAddr, err := envtestenv.FreeAddr()
	if err != nil {
		return err
	}
	probeAddr, err := envtestenv.FreeAddr()
	if err != nil {
		return err
	}
	host, portStr, _ := net.SplitHostPort(webhookAddr)
	port, _ := strconv.Atoi(portStr)
	// Short enough for the failover test, long enough that a renewal
	// survives a busy 2-core machine.
	const renewDeadline = 4 * time.Second
	writer := budget.Writer{
		Lease:   types.NamespacedName{Namespace: "dynamo-system", Name: budget.LeaderElectionID},
		Address: webhookAddr, CertDir: f.wio.LocalServingCertDir,
	}
	lock, err := writer.Lock(restConfig, renewDeadline)
	if err != nil {
		return err
	}
	server, err := powerwebhook.NewServer(powerwebhook.ServerOptions(host, port, f.wio.LocalServingCertDir), clientAuth)
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restConfig, manager.Options{
		Scheme:                 f.scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probeAddr,
		WebhookServer:          server,
		Cache:                  powerwebhook.CacheOptions(),
		Client:                 powerwebhook.ClientOptions(),
		// Several replicas live in this process; in production each is alone.
		Controller:                          config.Controller{SkipNameValidation: ptr.To(true)},
		LeaderElection:                      true,
		LeaderElectionID:                    budget.LeaderElectionID,
		LeaderElectionResourceLockInterface: lock,
		LeaderElectionReleaseOnCancel:       true,
		LeaseDuration:                       ptr.To(5 * time.Second),
		RenewDeadline:                       ptr.To(renewDeadline),
		RetryPeriod:                         ptr.To(500 * time.Millisecond),
	})
	if err != nil {
		return err
	}
	decode, err := policy.ParseDefaultRule("role=decode=300")
	if err != nil {
		return err
	}
	admit := &policy.Admission{Catalog: policy.DefaultCatalog(), UnknownProducts: policy.UnknownProductsDeny, Defaults: []policy.DefaultRule{decode}}
	r := &replica{addr: webhookAddr, mgr: mgr, registry: prometheus.NewRegistry(), stopped: make(chan error, 1), exited: make(chan struct{})}
	opts := budget.Options{ReservationTTL: reservationTTL, Resync: 30 * time.Second, Attempts: 50, Writer: &writer}
	ctx, cancel := context.WithCancel(f.ctx)
	r.cancel = cancel
	if err := powerwebhook.Setup(ctx, mgr, admit, r.registry, opts); err != nil {
		cancel()
		return err
	}
	go func() {
		err := mgr.Start(ctx)
		close(r.exited)
		r.stopped <- err
	}()

	// Ready means the webhook server listens and every cache (the node index
	// included) has synced: the same probe the Deployment uses.
	if err := poll.Until(ctx, poll.Opts{Timeout: time.Minute}, "ready", func(context.Context) (bool, string, error) {
		ok, why := envtestenv.Ready(probeAddr)
		return ok, why, nil
	}); err != nil {
		cancel()
		return fmt.Errorf("webhook replica never became ready: %w", err)
	}
	f.mu.Lock()
	r.name = fmt.Sprintf("replica-%d", len(f.replicas))
	f.replicas = append(f.replicas, r)
	f.mu.Unlock()
	return nil
}

// stop takes a replica out of rotation and stops it.
func (f *fleet) stop(r *replica) error {
	f.mu.Lock()
	for i, x := range f.replicas {
		if x == r {
			f.replicas = append(f.replicas[:i], f.replicas[i+1:]...)
			break
		}
	}
	f.mu.Unlock()
	r.cancel()
	return <-r.stopped
}

func (f *fleet) stopAll() {
	_ = f.listener.Close()
	f.mu.Lock()
	replicas := append([]*replica(nil), f.replicas...)
	f.mu.Unlock()
	for _, r := range replicas {
		_ = f.stop(r) // a stopped leader reports "leader election lost"
	}
}

// leader returns the replica that runs the budget reconciler.
func (f *fleet) leader() *replica {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.replicas {
		select {
		case <-r.exited:
			continue
		default:
		}
		select {
		case <-r.mgr.Elected():
			return r
		default:
		}
	}
	return nil
}

// waitUntilEverySees waits until the cache of every running replica holds
// obj: until then a replica would admit without it.
func (f *fleet) waitUntilEverySees(ctx context.Context, obj client.Object) error {
	f.mu.Lock()
	replicas := slices.Clone(f.replicas)
	f.mu.Unlock()
	// Polled often: the wait is part of every admission the fleet measures.
	every := poll.Opts{Interval: 10 * time.Millisecond, Timeout: time.Minute}
	return poll.Until(ctx, every, "every replica's cache holds "+client.ObjectKeyFromObject(obj).String(), func(ctx context.Context) (bool, string, error) {
		for _, r := range replicas {
			select {
			case <-r.exited:
				continue
			default:
			}
			if err := r.mgr.GetCache().Get(ctx, client.ObjectKeyFromObject(obj), obj.DeepCopyObject().(client.Object)); err != nil {
				return false, r.name + ": " + err.Error(), nil // not there yet
			}
		}
		return true, "", nil
	})
}

func (f *fleet) registries() []*prometheus.Registry {
	f.mu.Lock()
	defer f.mu.Unlock()
	var regs []*prometheus.Registry
	for _, r := range f.replicas {
		regs = append(regs, r.registry)
	}
	return regs
}
