package agent

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// WriteReports writes a reconcile's reports as `power-agent inspect` prints
// them: a table of every GPU, its limits and draw (read now from lib),
// whether the ledger owns it, the pods holding it and what the reconcile
// does or would do.
func WriteReports(out io.Writer, lib nvmlctl.Library, reports []GPUReport, ledger *Ledger) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	_, _ = fmt.Fprintln(w, "INDEX\tUUID\tPRODUCT\tMIN\tMAX\tDEFAULT\tCURRENT\tENFORCED\tDRAW\tOWNED\tPODS\tDESIRED\tACTION")
	for _, r := range reports {
		draw := "?"
		if d, err := lib.PowerDraw(r.UUID); err == nil {
			draw = wattsText(d)
		}
		owned := "no"
		if o, ok := ledger.Get(r.UUID); ok {
			owned = "yes (was " + wattsText(o.Original) + ")"
		}
		desired := "-"
		if r.Desired > 0 {
			desired = wattsText(r.Desired)
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
			wattsText(l.Min), wattsText(l.Max), wattsText(l.Default), wattsText(l.Current), wattsText(l.Enforced), draw, owned, pods, desired, action)
	}
	return w.Flush() // tabwriter keeps the first write error and Flush returns it
}

// wattsText is a reading as `inspect` prints it: exact decimal watts, "48.75W".
func wattsText(mw policy.Milliwatts) string { return mw.String() + "W" }
