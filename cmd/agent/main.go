// Command power-agent enforces admitted GPU power limits on one node through
// NVML. `power-agent inspect` prints what it sees and would do, read-only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
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

// stateLockWait bounds how long an agent waits for its predecessor on the
// node to release the state directory: longer than the DaemonSet's
// terminationGracePeriodSeconds (60), after which kubelet has killed it.
const stateLockWait = 90 * time.Second

func main() {
	if os.Getenv("GOGC") == "" {
		// The live heap is about 4 MiB: collecting at 1.5x it rather than 2x
		// keeps 2 MiB off every node, for a millisecond's GC now and then.
		debug.SetGCPercent(50)
	}
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

	inspect := len(os.Args) > 1 && os.Args[1] == "inspect"
	args := os.Args[1:]
	if inspect {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	root := zap.New(zap.UseFlagOptions(&zapOpts))
	log := root.WithName("power-agent")

	var err error
	if inspect {
		err = runInspect(root.WithName("inspect"), o, os.Stdout)
	} else {
		err = run(log, o)
	}
	if err != nil {
		log.Error(err, "Power agent stopped")
		os.Exit(1)
	}
}

// openNVML opens the real library, or the fake that --fake-nvml names.
func openNVML(o options) (nvmlctl.Library, error) {
	if o.fakeNVML != "" {
		return nvmlctl.NewFakeFromFile(o.fakeNVML)
	}
	lib, err := nvmlctl.Open(nvml.New())
	if err != nil {
		return nil, fmt.Errorf("initialize NVML (is the NVIDIA driver installed, and does the pod run with runtimeClassName: nvidia "+
			"and NVIDIA_VISIBLE_DEVICES=all so libnvidia-ml.so.1 is mounted?): %w", err)
	}
	return lib, nil
}

func run(log logr.Logger, o options) error {
	if o.nodeName == "" {
		return errors.New("--node-name (or NODE_NAME) is required")
	}
	skipped, stampKey, err := stampTrust(o)
	if err != nil {
		return err
	}
	lib, err := openNVML(o)
	if err != nil {
		return err // NVML is never called again after a failed init; kubelet restarts us with backoff
	}
	defer func() { _ = lib.Shutdown() }()
	reg := newRegistry()
	metrics := agent.NewMetrics(reg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills the agent at once

	// Probes are served from the start, so that an agent waiting for its
	// predecessor's lock is alive (not restarted) and not ready.
	var ready atomic.Pointer[healthz.Checker]
	waiting := healthz.Checker(func(*http.Request) error { return errors.New("waiting for the state directory's lock") })
	ready.Store(&waiting)
	if err := serve(ctx, log, "metrics", o.metricsAddr, metricsHandler(reg)); err != nil {
		return err
	}
	if err := serve(ctx, log, "probes", o.probeAddr, probesHandler(func(r *http.Request) error { return (*ready.Load())(r) })); err != nil {
		return err
	}
	lockCtx, cancelLock := context.WithTimeoutCause(ctx, stateLockWait, errors.New("gave up waiting"))
	release, err := agent.LockStateDir(lockCtx, log, o.stateDir)
	cancelLock()
	if err != nil {
		return err // nothing owned yet, nothing changed
	}
	defer release()
	ledger, err := agent.OpenLedger(o.stateDir)
	if err != nil {
		if !errors.Is(err, agent.ErrCorruptLedger) {
			return err
		}
		metrics.LedgerCorrupt()
		log.Error(err, "Refused the ownership ledger; starting with an empty one")
	}
	podResources, err := podmap.NewPodResourcesClient(o.podResourcesSocket, podmap.DefaultListTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = podResources.Close() }()

	k, err := newKube(o.kubeconfig)
	if err != nil {
		return err
	}

	pods := k.podInformer(o.nodeName)
	// Events queued before SIGTERM still go out while the agent shuts down.
	eventsCtx, stopEvents := context.WithCancel(context.Background())
	defer stopEvents()
	recorder := newEventRecorder(k, log)
	go recorder.post(eventsCtx)
	enforcer := &agent.Enforcer{NVML: lib, Ledger: ledger, RequireValidation: o.requireValidation, SkippedNamespaces: skipped,
		StampKey: stampKey, Recorder: recorder, Log: log, Metrics: metrics}
	runner := &agent.Runner{Enforcer: enforcer, Pods: corelisters.NewPodLister(pods.GetIndexer()), PodsSynced: pods.HasSynced,
		APIReachable: k.apiReachable, PodResources: podResources, RequirePodResources: o.requirePodResources,
		Proc: os.DirFS(o.proc), Interval: o.interval, Debounce: o.debounce, Log: log}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { runner.Trigger() },
		UpdateFunc: func(any, any) { runner.Trigger() },
		DeleteFunc: func(any) { runner.Trigger() },
	}); err != nil {
		return err
	}
	runnerReady := healthz.Checker(runner.Ready)
	ready.Store(&runnerReady)
	log.Info("Starting power agent", "node", o.nodeName, "interval", o.interval, "stateDir", o.stateDir,
		"requireValidation", o.requireValidation, "signedStamps", stampKey != nil, "requirePodResources", o.requirePodResources,
		"webhookSkippedNamespaces", sets.List(skipped), "ownedGPUs", len(ledger.Owned()))
	// The first cycle waits for the node's pods, as under controller-runtime's manager.
	if syncPods(ctx, log, pods) {
		runner.Run(ctx)
	}
	return shutdown(log, k, enforcer, o)
}

// shutdown keeps the caps only for a successor: when the DaemonSet will run
// a new agent pod on this node (a rolling update, a deleted or evicted agent
// pod). An uninstall, a node that left the DaemonSet (it lost the label its
// nodeSelector asks, or took a taint it does not tolerate), or
// --restore-on-exit gives every owned GPU back: no agent would come to do it.
func shutdown(log logr.Logger, k *kube, e *agent.Enforcer, o options) error {
	restore, why := o.restoreOnExit, "--restore-on-exit"
	if !restore {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keep, reason, err := successor(ctx, k, o)
		if err != nil {
			log.Error(err, "Could not tell whether another agent will run on this node; keeping caps for it")
		} else if !keep {
			restore, why = true, reason
		}
	}
	if !restore {
		log.Info("Keeping GPU caps for the next agent", "ownedGPUs", len(e.Ledger.Owned()))
		return nil
	}
	log.Info("Restoring every capped GPU before exit", "reason", why, "ownedGPUs", len(e.Ledger.Owned()))
	return e.RestoreAll()
}

// successor reads the DaemonSet and this node and decides
// (agent.SuccessorWillRun) whether another agent will run here. It fails
// only when it cannot tell.
func successor(ctx context.Context, k *kube, o options) (bool, string, error) {
	ds, err := k.daemonSet(ctx, o.namespace, o.daemonSet)
	switch {
	case apierrors.IsNotFound(err), apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		// Forbidden and Unauthorized too: `kubectl delete -f daemonset.yaml`
		// removes our RBAC, or our ServiceAccount and with it our token, with
		// the DaemonSet. No successor runs without them.
		ds = nil
	case err != nil:
		return false, "", fmt.Errorf("read DaemonSet %s/%s: %w", o.namespace, o.daemonSet, err)
	}
	var node *corev1.Node
	if ds != nil && !ds.Deleting {
		node, err = k.node(ctx, o.nodeName)
		switch {
		case apierrors.IsNotFound(err):
			node = nil // a deleted node: nothing schedules to it until its kubelet registers it again
		case err != nil:
			return false, "", fmt.Errorf("read node %s: %w", o.nodeName, err)
		}
	}
	keep, why := agent.SuccessorWillRun(ds, node)
	return keep, why, nil
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
