// Package budget enforces GPUPowerBudgets: the committed watts of a budget
// never exceed its total, whatever the number of webhook replicas.
//
// It holds:
//   - Ledger (ledger.go): charges admitted pods to the budgets that select
//     their namespace, by reservations written in batches into each budget's
//     status with resourceVersion-checked updates; the decision per request
//     is policy.DecideReservation. It also reads the budgets' default limits
//     for the mutating webhook.
//   - Peers and Writer (forward.go): the replica-to-replica protocol. The
//     holder of the leader-election Lease writes every budget; the others
//     forward their reservations to it over mutually authenticated TLS and
//     write themselves when it cannot be reached.
//   - Reconciler (reconciler.go): recounts each budget's status from the live
//     pods it charges (pkg/podindex) and the reservations of pods not yet
//     seen. Its recount is a request in the ledger's queue (opRecount), so it
//     applies to exactly the version a batch writes.
//   - ValidateSpec (spec.go): what the CRD's schema cannot check, for both
//     the budget webhook and the reconciler.
//   - Metrics (metrics.go) and Setup (setup.go), which wires all of it into a
//     controller-runtime manager.
package budget
