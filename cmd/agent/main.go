// Command power-agent enforces admitted GPU power limits on one node through
// NVML. `power-agent inspect` prints what it sees and would do, read-only.
package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/util/sets"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/agent/endpoints"
	"github.com/dynamo-power/gpu-power/pkg/agent/events"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

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
	o, inspect, root := parseFlags(os.Args[1:])
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
	reg := endpoints.NewRegistry()
	metrics := agent.NewMetrics(reg)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop) // a second signal kills the agent at once

	// Probes are served from the start, so that an agent waiting for its
	// predecessor's lock is alive (not restarted) and not ready.
	var runner atomic.Pointer[agent.Runner]
	ready := func(r *http.Request) error {
		if rn := runner.Load(); rn != nil {
			return rn.Ready(r)
		}
		return errors.New("waiting for the state directory's lock")
	}
	if err := endpoints.Serve(ctx, log, "metrics", o.metricsAddr, endpoints.MetricsHandler(reg)); err != nil {
		return err
	}
	if err := endpoints.Serve(ctx, log, "probes", o.probeAddr, endpoints.ProbesHandler(ready)); err != nil {
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
	k, err := kube.New(o.kubeconfig)
	if err != nil {
		return err
	}

	view, err := k.NodeView(ctx, o.nodeName)
	if err != nil {
		return err
	}
	// Events queued before SIGTERM still go out while the agent shuts down.
	eventsCtx, stopEvents := context.WithCancel(context.Background())
	defer stopEvents()
	recorder := events.NewRecorder(k, log)
	go recorder.Post(eventsCtx)
	enforcer := &agent.Enforcer{NVML: lib, Ledger: ledger, RequireValidation: o.requireValidation, SkippedNamespaces: skipped,
		StampKey: stampKey, Recorder: recorder, Log: log, Metrics: metrics}
	r := &agent.Runner{Enforcer: enforcer, Pods: corelisters.NewPodLister(view.Pods.GetIndexer()), PodsSynced: view.Synced,
		Slices: view.ResourceSlices, APIReachable: k.APIReachable, PodResources: podResources, RequirePodResources: o.requirePodResources,
		Proc: os.DirFS(o.proc), Interval: o.interval, Debounce: o.debounce, Log: log}
	if err := view.OnChange(r.Trigger); err != nil {
		return err
	}
	runner.Store(r)
	log.Info("Starting power agent", "node", o.nodeName, "interval", o.interval, "stateDir", o.stateDir,
		"requireValidation", o.requireValidation, "signedStamps", stampKey != nil, "requirePodResources", o.requirePodResources,
		"webhookSkippedNamespaces", sets.List(skipped), "ownedGPUs", len(ledger.Owned()))
	// The first cycle waits for the node's pods (and slices), as under controller-runtime's manager.
	if view.Sync(ctx, log) {
		r.Run(ctx)
	}
	return enforcer.Shutdown(o.restoreOnExit, func(ctx context.Context) (bool, string, error) {
		return k.SuccessorWillRun(ctx, o.namespace, o.daemonSet, o.nodeName)
	})
}
