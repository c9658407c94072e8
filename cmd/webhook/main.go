// Command power-webhook admits GPU pods: it defaults, checks and stamps their
// per-GPU power limit (see pkg/policy for the rules).
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
)

type defaultRules []policy.DefaultRule

func (d *defaultRules) String() string { return fmt.Sprint(len(*d), " rules") }
func (d *defaultRules) Set(s string) error {
	r, err := policy.ParseDefaultRule(s)
	if err != nil {
		return err
	}
	*d = append(*d, r)
	return nil
}

type options struct {
	certDir, metricsAddr, probeAddr, catalogFile, unknown, advertise string
	port                                                             int
	defaults                                                         defaultRules
	leaderElect                                                      bool
	budgets                                                          powerwebhook.BudgetOptions
}

func main() {
	var o options
	flag.StringVar(&o.certDir, "cert-dir", "/etc/power-webhook/certs", "Folder holding tls.crt and tls.key; changes are picked up without a restart.")
	flag.IntVar(&o.port, "webhook-port", 9443, "Port the admission webhooks are served on.")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus /metrics endpoint; 0 disables it.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	flag.StringVar(&o.catalogFile, "catalog-file", "", "CSV of GPU power ranges (gpu_product,min_w,default_w,max_w) whose rows add to or replace the built-in catalog.")
	flag.StringVar(&o.unknown, "unknown-products", string(policy.UnknownProductsDeny), "What to do when no GPU product a pod can land on is in the catalog: deny, or warn and admit.")
	flag.Var(&o.defaults, "default-rule", "Default limit for GPU pods without one, as selector=watts (label selector syntax, e.g. role=decode=250); repeatable, first match wins.")
	flag.BoolVar(&o.leaderElect, "leader-elect", true, "Elect one replica to run the budget reconciler and write budget reservations; the others forward theirs to it (every replica serves admissions).")
	flag.StringVar(&o.advertise, "advertise-address", "", "host:port where the other replicas reach this one's webhook server to forward budget reservations; default: this pod's IP and --webhook-port.")
	flag.DurationVar(&o.budgets.ReservationTTL, "reservation-ttl", time.Minute, "How long a budget reservation counts if its pod never appears (e.g. its creation failed after admission).")
	flag.DurationVar(&o.budgets.Resync, "budget-resync", 30*time.Second, "Longest time between two recomputations of a budget's status.")
	flag.IntVar(&o.budgets.Attempts, "reservation-attempts", 50, "Status writes tried for one batch of budget reservations before its pods are denied.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("power-webhook")

	if err := run(log, o); err != nil {
		log.Error(err, "Power webhook stopped")
		os.Exit(1)
	}
}

func run(log logr.Logger, o options) error {
	admit, err := newAdmission(o)
	if err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := powerv1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	cfg := ctrl.GetConfigOrDie()
	opts := manager.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:        o.probeAddr,
		WebhookServer:                 webhook.NewServer(powerwebhook.ServerOptions("", o.port, o.certDir)),
		Cache:                         powerwebhook.CacheOptions(),
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              powerwebhook.LeaderElectionID,
		LeaderElectionReleaseOnCancel: true,
	}
	if o.leaderElect {
		o.budgets.Writer = writer(log, o)
		if opts.LeaderElectionResourceLockInterface, err = o.budgets.Writer.Lock(cfg, 10*time.Second); err != nil {
			return err
		}
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	ctx := ctrl.SetupSignalHandler()
	if err := powerwebhook.Setup(ctx, mgr, admit, metrics.Registry, o.budgets); err != nil {
		return err
	}
	log.Info("Starting power webhook", "port", o.port, "certDir", o.certDir, "products", len(admit.Catalog),
		"unknownProducts", admit.UnknownProducts, "defaultRules", len(admit.Defaults))
	return mgr.Start(ctx)
}

func newAdmission(o options) (*policy.Admission, error) {
	catalog := policy.DefaultCatalog()
	if o.catalogFile != "" {
		f, err := os.Open(o.catalogFile)
		if err != nil {
			return nil, fmt.Errorf("open catalog: %w", err)
		}
		defer func() { _ = f.Close() }()
		extra, err := policy.ParseCatalog(f)
		if err != nil {
			return nil, fmt.Errorf("catalog %s: %w", o.catalogFile, err)
		}
		catalog = catalog.Merge(extra)
	}
	u := policy.UnknownProducts(o.unknown)
	if u != policy.UnknownProductsDeny && u != policy.UnknownProductsWarn {
		return nil, fmt.Errorf("--unknown-products=%q: want %q or %q", o.unknown, policy.UnknownProductsDeny, policy.UnknownProductsWarn)
	}
	return &policy.Admission{Catalog: catalog, UnknownProducts: u, Defaults: o.defaults}, nil
}

// writer is the leader-election Lease and this replica's address in it.
func writer(log logr.Logger, o options) *powerwebhook.Writer {
	w := &powerwebhook.Writer{
		// In the pod, the namespace comes from the service account; elsewhere
		// (make up, tests) from POD_NAMESPACE or dynamo-system.
		Lease:   types.NamespacedName{Namespace: leaderElectionNamespace(), Name: powerwebhook.LeaderElectionID},
		Address: o.advertise, CertDir: o.certDir,
	}
	if w.Address == "" {
		addr, err := powerwebhook.LocalAddress(o.port)
		if err != nil {
			// Still correct: the other replicas write their own reservations.
			log.Error(err, "No address to receive forwarded budget reservations at")
		}
		w.Address = addr
	}
	return w
}

func leaderElectionNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		return string(b)
	}
	return "dynamo-system"
}
