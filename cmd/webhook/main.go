// Command power-webhook admits GPU pods: it defaults, checks and stamps their
// per-GPU power limit (see pkg/policy for the rules) and charges them to the
// GPUPowerBudgets that select their namespace; one replica, elected by a
// Lease, writes the budgets and recounts them (pkg/budget). Its flags are in
// flags.go.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
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
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
)

func main() {
	if os.Getenv("GOGC") == "" {
		// One scheduler thread (GOMAXPROCS from the 100m request) leaves the
		// collector a fraction of it while a restart decodes the list of
		// every pod, and the heap overshoots: at 100,000 pods the restart
		// peaked at 147 MiB RSS at the default 100, 123 MiB at 70
		// (docs/benchmarks.md), for a few percent more CPU.
		debug.SetGCPercent(70)
	}
	var o options
	bindFlags(flag.CommandLine, &o)
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
