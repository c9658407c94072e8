package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/go-logr/logr"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

// runInspect prints every GPU, the pods holding it, and what a reconcile
// would do. It writes nothing to any GPU, or to the ledger, ever: the
// enforcer runs in dry-run mode on a ledger read without changes.
func runInspect(log logr.Logger, o options, out io.Writer) error {
	lib, err := openNVML(o)
	if err != nil {
		return err
	}
	defer func() { _ = lib.Shutdown() }()
	ledger, ledgerErr := agent.ReadLedger(o.stateDir)
	if ledgerErr != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", ledgerErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	skipped, stampKey, err := stampTrust(o)
	if err != nil {
		return err
	}
	e := &agent.Enforcer{NVML: lib, Ledger: ledger, RequireValidation: o.requireValidation, SkippedNamespaces: skipped, StampKey: stampKey, Log: log}
	var in agent.Inputs
	var gpusErr error // without a node, a GPU listing that fails is a warning, as a failed reconcile is
	if o.nodeName != "" {
		k, err := kube.New(o.kubeconfig)
		if err != nil {
			return err
		}
		view, err := k.NodeView(ctx, o.nodeName)
		if err != nil {
			return err
		}
		if !view.Sync(ctx, log) {
			return fmt.Errorf("list the pods and ResourceSlices of node %s: %w", o.nodeName, ctx.Err())
		}
		pr, err := podmap.NewPodResourcesClient(o.podResourcesSocket, podmap.DefaultListTimeout)
		if err != nil {
			return err
		}
		defer func() { _ = pr.Close() }()
		r := &agent.Runner{Enforcer: e, Pods: corelisters.NewPodLister(view.Pods.GetIndexer()), Slices: view.ResourceSlices, PodResources: pr,
			RequirePodResources: o.requirePodResources, Proc: os.DirFS(o.proc), Log: e.Log}
		if in, err = r.Gather(ctx); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, "warning: no --node-name/NODE_NAME: pods are not shown and no GPU is considered held")
		in.GPUs, gpusErr = agent.ListGPUs(lib)
	}
	reports, err := e.Reconcile(ctx, in, true)
	if err = errors.Join(gpusErr, err); err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	return agent.WriteReports(out, lib, reports, ledger)
}
