// Command power-webhook admits GPU pods: it defaults, checks and stamps their
// per-GPU power limit (see pkg/policy for the rules).
package main

import (
	"errors"
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

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/pkg/stampkey"
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
	certDir, metricsAddr, probeAddr, pprofAddr, catalogFile, unknown, advertise, timeSliced string
	stampKeyFile                                                                            string
	port                                                                                    int
	maxGPUs                                                                                 int64
	defaults                                                                                defaultRules
	leaderElect                                                                             bool
	budgets                                                                                 budget.Options
	clientAuth                                                                              powerwebhook.ClientAuth
}

func main() {
	var o options
	flag.StringVar(&o.certDir, "cert-dir", "/etc/power-webhook/certs", "Folder holding tls.crt and tls.key; changes are picked up without a restart.")
	flag.IntVar(&o.port, "webhook-port", 9443, "Port the admission webhooks are served on.")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus /metrics endpoint; 0 disables it.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	flag.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "Address of Go's /debug/pprof endpoints, for profiling CPU and memory; 0 (the default) disables them. Unauthenticated: bind it to localhost and reach it with kubectl port-forward.")
	flag.StringVar(&o.catalogFile, "catalog-file", "", "CSV of GPU power ranges (gpu_product,min_w,default_w,max_w) whose rows add to or replace the built-in catalog.")
	flag.StringVar(&o.unknown, "unknown-products", string(policy.UnknownProductsDeny), "What to do when no GPU product a pod can land on is in the catalog: deny, or warn and admit.")
	flag.Int64Var(&o.maxGPUs, "max-gpus-per-pod", policy.DefaultMaxGPUsPerPod, "Most GPUs a new pod may request (nvidia.com/gpu and nvidia.com/gpu.shared together); more is denied: no node holds that many.")
	flag.StringVar(&o.timeSliced, "time-sliced-gpus", string(policy.TimeSlicedGPUsDeny), "What a power limit on a time-sliced GPU gets: deny, or lowest-wins (admitted with a warning; the board is capped at the lowest limit among the pods sharing it).")
	flag.StringVar(&o.stampKeyFile, "stamp-key-file", "", "Key material to sign every stamp with (the agent's --stamp-key-file names the same file): the agent then enforces no stamp the webhook did not set.")
	flag.Var(&o.defaults, "default-rule", "Default limit for GPU pods without one, as selector=watts (label selector syntax, e.g. role=decode=250); repeatable, first match wins.")
	flag.BoolVar(&o.leaderElect, "leader-elect", true, "Elect one replica to run the budget reconciler and write budget reservations; the others forward theirs to it (every replica serves admissions).")
	flag.StringVar(&o.advertise, "advertise-address", "", "host:port where the other replicas reach this one's webhook server to forward budget reservations; default: this pod's IP and --webhook-port.")
	flag.StringVar(&o.clientAuth.CAFile, "client-ca-file", "", "PEM bundle of the CAs that sign the API server's client certificate (re-read when it changes); set: the webhook port refuses, in the TLS handshake, any caller without a certificate from them other than a replica holding the serving key. Needs the API server's AdmissionConfiguration to present one (docs/install.md).")
	flag.Func("client-name", "With --client-ca-file: a common name the API server's client certificate may carry (the common name alone, as kube-apiserver names x509 clients); repeatable; unset: any certificate those CAs signed for client authentication.", func(s string) error {
		if s == "" {
			return errors.New("empty name")
		}
		o.clientAuth.Names = append(o.clientAuth.Names, s)
		return nil
	})
	flag.DurationVar(&o.budgets.ReservationTTL, "reservation-ttl", 35*time.Second, "How long a budget reservation counts while its pod has not appeared (a failed or forged admission): the longest the API server may still take to store an admitted pod (30 s, the most any validating webhook may wait, plus storage); a pod the API server holds keeps counting past it (docs/budgets.md).")
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
	if len(o.clientAuth.Names) > 0 && o.clientAuth.CAFile == "" {
		return errors.New("--client-name needs --client-ca-file")
	}
	server, err := powerwebhook.NewServer(powerwebhook.ServerOptions("", o.port, o.certDir), o.clientAuth)
	if err != nil {
		return err
	}
	cfg := ctrl.GetConfigOrDie()
	opts := manager.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: o.metricsAddr},
		HealthProbeBindAddress:        o.probeAddr,
		PprofBindAddress:              o.pprofAddr,
		WebhookServer:                 server,
		Cache:                         powerwebhook.CacheOptions(),
		Client:                        powerwebhook.ClientOptions(),
		LeaderElection:                o.leaderElect,
		LeaderElectionID:              budget.LeaderElectionID,
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
	log.Info("Starting power webhook", "port", o.port, "certDir", o.certDir, "clientCAFile", o.clientAuth.CAFile, "clientNames", o.clientAuth.Names, "products", len(admit.Catalog),
		"unknownProducts", admit.UnknownProducts, "defaultRules", len(admit.Defaults), "signedStamps", admit.StampKey != nil)
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
	ts := policy.TimeSlicedGPUs(o.timeSliced)
	if ts != policy.TimeSlicedGPUsDeny && ts != policy.TimeSlicedGPUsLowestWins {
		return nil, fmt.Errorf("--time-sliced-gpus=%q: want %q or %q", o.timeSliced, policy.TimeSlicedGPUsDeny, policy.TimeSlicedGPUsLowestWins)
	}
	if o.maxGPUs < 1 {
		return nil, fmt.Errorf("--max-gpus-per-pod=%d: want at least 1", o.maxGPUs)
	}
	key, err := stampkey.Load(o.stampKeyFile)
	if err != nil {
		return nil, err
	}
	return &policy.Admission{Catalog: catalog, UnknownProducts: u, Defaults: o.defaults, MaxGPUsPerPod: o.maxGPUs, TimeSlicedGPUs: ts, StampKey: key}, nil
}

// writer is the leader-election Lease and this replica's address in it.
func writer(log logr.Logger, o options) *budget.Writer {
	w := &budget.Writer{
		// In the pod, the namespace comes from the service account; elsewhere
		// (make up, tests) from POD_NAMESPACE or dynamo-system.
		Lease:   types.NamespacedName{Namespace: leaderElectionNamespace(), Name: budget.LeaderElectionID},
		Address: o.advertise, CertDir: o.certDir,
	}
	if w.Address == "" {
		addr, err := budget.LocalAddress(o.port)
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
