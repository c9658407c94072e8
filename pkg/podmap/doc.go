// Package podmap decides which pods hold which GPU on this node.
//
// Allocation is the truth: where kubelet's PodResources answers, a GPU's
// holders are the pods it lists the GPU for (devices allocated to a pod,
// known before the workload's first CUDA call). The GPU processes NVML
// reports, mapped to their pods through /proc/<pid>/cgroup, never add a pod
// to a GPU then: a process on a GPU its pod was not allocated (a pod that
// asked for no GPU and sees them all) is a Stray, for the caller to report.
// Only for a kubelet without PodResources (Sources.NVMLOnly) do processes
// attribute GPUs, the documented fallback.
//
// Pods are keyed by UID: a cgroup names a pod by UID only, and a UID, unlike a
// namespace/name, is never reused by the pod's successor. PodResources names
// pods by namespace/name; Identities joins those names to the caller's pod
// cache cycle after cycle, so that a pod re-created under its predecessor's
// name never inherits the predecessor's devices.
//
// What it holds: Build (the holders of each GPU, the strays), Identities
// (namespace/name to UID), the cgroup parser (PodOfPID, PodUIDFromCgroup),
// the PodResources client and the device ID parser with its Resolver.
//
// It never talks to NVML (the caller hands in NVML's processes and the lookups
// only NVML can answer: a MIG device's parent, a GPU index's UUID), never reads
// the API server, and never changes anything on the node. Everything read from
// /proc and from kubelet is treated as untrusted: it is validated, bounded, and
// never panics the agent.
package podmap
