package budget

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Options tune budget enforcement.
type Options struct {
	// ReservationTTL is how long a reservation counts if its pod never appears.
	ReservationTTL time.Duration
	// Resync is the longest the reconciler waits between two recomputations.
	Resync time.Duration
	// Attempts bounds the status writes of one reservation batch.
	Attempts int
	// Writer, when set, is the leader-election Lease (the manager's lock must
	// be Writer.Lock) whose holder writes every budget: the other replicas
	// forward their reservations to it. Nil: every replica writes its own.
	Writer *Writer
}

// Setup wires budget enforcement into mgr and returns the ledger admission
// charges pods to: forwarding to the writer replica (served on the
// manager's webhook server at ForwardPath) and the leader-elected
// reconciler, with metrics registered with reg. pods is the pod index both
// count from, podsSeen the resourceVersion its feed has caught up to.
func Setup(mgr manager.Manager, pods *podindex.Index, podsSeen func() string, catalog policy.Catalog, cluster policy.Cluster,
	reg prometheus.Registerer, o Options) (*Ledger, error) {
	m := NewMetrics(reg)
	ledger := &Ledger{
		Cache: mgr.GetClient(), Pods: pods, API: mgr.GetAPIReader(), Client: mgr.GetClient(), Catalog: catalog, Cluster: cluster,
		TTL: o.ReservationTTL, Attempts: o.Attempts, Metrics: m, Now: time.Now,
		Leading: func() bool {
			select {
			case <-mgr.Elected():
				return true
			default:
				return false
			}
		},
	}
	if o.Writer != nil {
		var err error
		if ledger.Peers, err = newPeers(*o.Writer, mgr.GetAPIReader(), ledger, m); err != nil {
			return nil, err
		}
		if err := mgr.Add(ledger.Peers.certs); err != nil {
			return nil, err
		}
		mgr.GetWebhookServer().Register(ForwardPath, ledger.Peers)
	}
	reconciler := &Reconciler{
		Client: mgr.GetClient(), API: mgr.GetAPIReader(), Ledger: ledger, Catalog: catalog, Cluster: cluster, Metrics: m,
		Recorder: mgr.GetEventRecorder("power-webhook"), Resync: o.Resync, Now: time.Now, PodsSeen: podsSeen,
	}
	ledger.TrustsIndex = func(b *powerv1alpha1.GPUPowerBudget) bool { return reconciler.hasCaughtUp(b, podsSeen()) }
	if err := reconciler.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("budget reconciler: %w", err)
	}
	return ledger, nil
}
