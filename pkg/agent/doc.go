// Package agent enforces admitted GPU power limits on one node: it decides
// each GPU's cap from the pods that hold it (pkg/policy), writes it through
// NVML (pkg/nvmlctl) only when the GPU's limit differs, and gives a GPU back
// the limit it had once no limited pod holds it.
//
// It never touches a GPU it did not cap: ownership is recorded in a ledger on
// the host, written before and after every NVML write, so a restarted agent
// adopts its caps and a lost or corrupt ledger never leads to a write on a GPU
// it cannot prove is its own.
package agent
