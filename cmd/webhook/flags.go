package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/pkg/stampkey"
	powerwebhook "github.com/dynamo-power/gpu-power/pkg/webhook"
)

// defaultRules is the repeatable --default-rule flag.
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

// options are the command's flags.
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

// bindFlags binds every flag of the command to o.
func bindFlags(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.certDir, "cert-dir", "/etc/power-webhook/certs", "Folder holding tls.crt and tls.key; changes are picked up without a restart.")
	fs.IntVar(&o.port, "webhook-port", 9443, "Port the admission webhooks are served on.")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus /metrics endpoint; 0 disables it.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	fs.StringVar(&o.pprofAddr, "pprof-bind-address", "0", "Address of Go's /debug/pprof endpoints, for profiling CPU and memory; 0 (the default) disables them. Unauthenticated: bind it to localhost and reach it with kubectl port-forward.")
	fs.StringVar(&o.catalogFile, "catalog-file", "", "CSV of GPU power ranges (gpu_product,min_w,default_w,max_w) whose rows add to or replace the built-in catalog.")
	fs.StringVar(&o.unknown, "unknown-products", string(policy.UnknownProductsDeny), "What to do when no GPU product a pod can land on is in the catalog: deny, or warn and admit.")
	fs.Int64Var(&o.maxGPUs, "max-gpus-per-pod", policy.DefaultMaxGPUsPerPod, "Most GPUs a new pod may request (nvidia.com/gpu and nvidia.com/gpu.shared together); more is denied: no node holds that many.")
	fs.StringVar(&o.timeSliced, "time-sliced-gpus", string(policy.TimeSlicedGPUsDeny), "What a power limit on a time-sliced GPU gets: deny, or lowest-wins (admitted with a warning; the board is capped at the lowest limit among the pods sharing it).")
	fs.StringVar(&o.stampKeyFile, "stamp-key-file", "", "Key material to sign every stamp with (the agent's --stamp-key-file names the same file): the agent then enforces no stamp the webhook did not set.")
	fs.Var(&o.defaults, "default-rule", "Default limit for GPU pods without one, as selector=watts (label selector syntax, e.g. role=decode=250); repeatable, first match wins.")
	fs.BoolVar(&o.leaderElect, "leader-elect", true, "Elect one replica to run the budget reconciler and write budget reservations; the others forward theirs to it (every replica serves admissions).")
	fs.StringVar(&o.advertise, "advertise-address", "", "host:port where the other replicas reach this one's webhook server to forward budget reservations; default: this pod's IP and --webhook-port.")
	fs.StringVar(&o.clientAuth.CAFile, "client-ca-file", "", "PEM bundle of the CAs that sign the API server's client certificate (re-read when it changes); set: the webhook port refuses, in the TLS handshake, any caller without a certificate from them other than a replica holding the serving key. Needs the API server's AdmissionConfiguration to present one (docs/install.md).")
	fs.Func("client-name", "With --client-ca-file: a common name the API server's client certificate may carry (the common name alone, as kube-apiserver names x509 clients); repeatable; unset: any certificate those CAs signed for client authentication.", func(s string) error {
		if s == "" {
			return errors.New("empty name")
		}
		o.clientAuth.Names = append(o.clientAuth.Names, s)
		return nil
	})
	fs.DurationVar(&o.budgets.ReservationTTL, "reservation-ttl", 35*time.Second, "How long a budget reservation counts while its pod has not appeared (a failed or forged admission): the longest the API server may still take to store an admitted pod (30 s, the most any validating webhook may wait, plus storage); a pod the API server holds keeps counting past it (docs/budgets.md).")
	fs.DurationVar(&o.budgets.Resync, "budget-resync", 30*time.Second, "Longest time between two recomputations of a budget's status.")
	fs.IntVar(&o.budgets.Attempts, "reservation-attempts", 50, "Status writes tried for one batch of budget reservations before its pods are denied.")
}

// newAdmission checks the policy flags and builds the admission policy.
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
