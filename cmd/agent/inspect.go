package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-logr/logr"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
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
	in := agent.Inputs{}
	if o.nodeName != "" {
		k, err := newKube(o.kubeconfig)
		if err != nil {
			return err
		}
		pods := k.podInformer(o.nodeName)
		if !syncPods(ctx, log, pods) {
			return fmt.Errorf("list the pods of node %s: %w", o.nodeName, ctx.Err())
		}
		pr, err := podmap.NewPodResourcesClient(o.podResourcesSocket, podmap.DefaultListTimeout)
		if err != nil {
			return err
		}
		defer func() { _ = pr.Close() }()
		r := &agent.Runner{Enforcer: e, Pods: corelisters.NewPodLister(pods.GetIndexer()), PodResources: pr,
			RequirePodResources: o.requirePodResources, Proc: os.DirFS(o.proc), Log: e.Log}
		if in, err = r.Gather(ctx); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(os.Stderr, "warning: no --node-name/NODE_NAME: pods are not shown and no GPU is considered held")
	}
	reports, err := e.Reconcile(ctx, in, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	return printReports(out, lib, reports, ledger)
}

func printReports(out io.Writer, lib nvmlctl.Library, reports []agent.GPUReport, ledger *agent.Ledger) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(w, "INDEX\tUUID\tPRODUCT\tMIN\tMAX\tDEFAULT\tCURRENT\tENFORCED\tDRAW\tOWNED\tPODS\tDESIRED\tACTION")
	for _, r := range reports {
		draw := "?"
		if d, err := lib.PowerDraw(r.UUID); err == nil {
			draw = watts(d)
		}
		owned := "no"
		if o, ok := ledger.Get(r.UUID); ok {
			owned = "yes (was " + watts(o.Original) + ")"
		}
		desired := "-"
		if r.Desired > 0 {
			desired = watts(r.Desired)
			if r.Clamped {
				desired += " (clamped)"
			}
		}
		pods := strings.Join(r.Pods, ",")
		if pods == "" {
			pods = "-"
		}
		action := string(r.Action)
		if r.Err != nil {
			action += ": " + r.Err.Error()
		}
		l := r.Limits
		_, _ = fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Index, r.UUID, r.Name,
			watts(l.Min), watts(l.Max), watts(l.Default), watts(l.Current), watts(l.Enforced), draw, owned, pods, desired, action)
	}
	return w.Flush() // tabwriter keeps the first write error and Flush returns it
}

func watts(mw nvmlctl.Milliwatts) string { return mw.String() + "W" }
