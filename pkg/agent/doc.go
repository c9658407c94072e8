// Package agent enforces admitted GPU power limits on one node: it decides
// each GPU's cap from the pods that hold it (pkg/policy), writes it through
// NVML (pkg/nvmlctl) only when the GPU's limit differs, and gives a GPU back
// the limit it had once no limited pod holds it.
//
// It never touches a GPU it did not cap: ownership is recorded in a ledger on
// the host, written before and after every NVML write, so a restarted agent
// adopts its caps and a lost or corrupt ledger never leads to a write on a GPU
// it cannot prove is its own.
//
// A cycle reads each thing once, in this order:
//
//   - Runner (runner.go) runs cycles on pod events and every interval. Its
//     Gather reads the node's pods (PodLister), kubelet's allocation
//     (PodResources), the GPUs (ListGPUs, once) and their processes, and
//     joins them (pkg/podmap) into Inputs: which pods hold which GPU.
//   - Enforcer (enforce.go) reconciles Inputs: for each GPU, the holders'
//     decision (policy.ResolveGPU), the desired cap clamped to the GPU's
//     range, and the write, with the Events (EventRecorder, Reason*) and a
//     GPUReport (Action) of each GPU. RestoreAll gives every owned GPU back;
//     Shutdown decides whether to (SuccessorWillRun, DaemonSet,
//     successor.go). WriteReports prints reports as `power-agent inspect`
//     does (report.go).
//   - Ledger (OpenLedger, ReadLedger, Ownership, ErrCorruptLedger,
//     LedgerFile, MarkerFile; ledger.go) is the ownership record, and
//     LockStateDir (LockFile; statelock.go) keeps one agent on it.
//   - Metrics (NewMetrics; metrics.go) exports what the cycles found and did.
//
// Power figures are milliwatts throughout; policy.Milliwatts's methods are
// the only conversions to watts, for logs, Events and metrics.
package agent
