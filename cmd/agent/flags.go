package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/pkg/stampkey"
)

type options struct {
	kubeconfig                         string
	nodeName, namespace, daemonSet     string
	stateDir, podResourcesSocket, proc string
	fakeNVML                           string
	metricsAddr, probeAddr             string
	interval, debounce                 time.Duration
	requireValidation, restoreOnExit   bool
	requirePodResources                bool
	skippedNamespaces, stampKeyFile    string
}

// parseFlags reads `power-agent [inspect] [flags]`: the options, whether to
// inspect, and the logger the zap flags ask for. A bad flag exits 2.
func parseFlags(args []string) (options, bool, logr.Logger) {
	var o options
	fs := flag.CommandLine
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "Paths to a kubeconfig. Only required if out-of-cluster.")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "This node's name (the DaemonSet sets NODE_NAME from spec.nodeName).")
	fs.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", "dynamo-system"), "Namespace of the agent's DaemonSet.")
	fs.StringVar(&o.daemonSet, "daemonset-name", "power-agent", "The agent's DaemonSet: when it is gone at shutdown, every capped GPU is restored.")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/power-agent", "Host directory of the ownership ledger.")
	fs.StringVar(&o.podResourcesSocket, "pod-resources-socket", "/var/lib/kubelet/pod-resources/kubelet.sock", "kubelet's PodResources socket.")
	fs.StringVar(&o.proc, "proc", "/proc", "The host's /proc (the agent runs with hostPID).")
	fs.StringVar(&o.fakeNVML, "fake-nvml", "", "Use a simulated NVML whose state lives in this JSON file (tests and demos only).")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus /metrics endpoint; 0 disables it.")
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	fs.DurationVar(&o.interval, "interval", 15*time.Second, "Period of the full reconcile that repairs drift.")
	fs.DurationVar(&o.debounce, "debounce", 200*time.Millisecond, "How long a burst of pod events is gathered before a reconcile.")
	fs.BoolVar(&o.requireValidation, "require-validation", true, "Enforce only limits the power webhook stamped (stamp == limit).")
	fs.BoolVar(&o.requirePodResources, "require-pod-resources", false,
		"Refuse to attribute GPUs by their processes when kubelet has no PodResources: enforce nothing (not ready) instead.")
	fs.StringVar(&o.skippedNamespaces, "webhook-skipped-namespaces", strings.Join(policy.SkippedNamespaces, ","),
		"Comma-separated namespaces the power webhook does not intercept (its namespaceSelector's NotIn values): limits there are not enforced.")
	fs.StringVar(&o.stampKeyFile, "stamp-key-file", "",
		"The key the power webhook signs stamps with (the same file as its --stamp-key-file): set, a stamp counts only with its valid signature.")
	fs.BoolVar(&o.restoreOnExit, "restore-on-exit", false, "Restore every capped GPU on shutdown, even on a rolling update.")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)

	inspect := len(args) > 0 && args[0] == "inspect"
	if inspect {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	return o, inspect, zap.New(zap.UseFlagOptions(&zapOpts))
}

// openNVML opens the real library, or the fake that --fake-nvml names.
func openNVML(o options) (nvmlctl.Library, error) {
	if o.fakeNVML != "" {
		return nvmlfake.NewFromFile(o.fakeNVML)
	}
	lib, err := nvmlctl.Open(nvml.New())
	if err != nil {
		return nil, fmt.Errorf("initialize NVML (is the NVIDIA driver installed, and does the pod run with runtimeClassName: nvidia "+
			"and NVIDIA_VISIBLE_DEVICES=all so libnvidia-ml.so.1 is mounted?): %w", err)
	}
	return lib, nil
}

// stampTrust is what tells a stamp the webhook set from one anyone typed:
// the namespaces it never sees, and the key it signs with (nil: unsigned).
func stampTrust(o options) (sets.Set[string], policy.StampKey, error) {
	skipped, err := parseNamespaces(o.skippedNamespaces)
	if err != nil {
		return nil, nil, err
	}
	key, err := stampkey.Load(o.stampKeyFile)
	return skipped, key, err
}

// parseNamespaces reads --webhook-skipped-namespaces: names separated by
// commas; empty means the webhook intercepts every namespace.
func parseNamespaces(list string) (sets.Set[string], error) {
	out := sets.New[string]()
	for _, ns := range strings.Split(list, ",") {
		ns = strings.TrimSpace(ns)
		if ns == "" {
			continue
		}
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("--webhook-skipped-namespaces: %q is not a namespace name: %s", ns, strings.Join(errs, "; "))
		}
		out.Insert(ns)
	}
	return out, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
