// Package nvmlctl is the only code that talks to NVML.
//
// It decides nothing about limits: it lists the node's GPUs, reads their power
// limits, draw and running processes, writes a power limit it is told to
// write, and resolves a MIG device to the GPU it lives on. Which limit a GPU
// should have, and whether a write is needed, is the caller's business.
//
// Library is the whole surface the agent uses, with the types it speaks
// (Device, PowerLimits, Process and ProcessKind, Milliwatts up to
// MaxMilliwatts). Two things implement it:
//
//   - NVML (files built with cgo, opened with Open), over
//     github.com/NVIDIA/go-nvml. NVML is initialised once; after a failed Init
//     it is never called again, because calling into a library that did not
//     load kills the process. Every later call returns the Init error instead.
//   - nvmlfake.Fake (package nvmlfake, cgo-free), for tests and demos: GPUs
//     with realistic ranges, fault injection, lost GPUs, MIG devices, drift by
//     "someone else", and an optional JSON state file that another process can
//     read and change.
//
// All power figures are milliwatts, NVML's unit; nothing here rounds to
// watts. Every error that came from NVML (or that the fake makes look as if it
// did) is an *Error that keeps NVML's return Code, so callers branch with
// errors.Is(err, ErrNotPermitted) and the like.
//
// It never reads Kubernetes objects, never decides which pod holds a GPU, and
// never keeps state about what it wrote: the ownership ledger is the agent's.
package nvmlctl
