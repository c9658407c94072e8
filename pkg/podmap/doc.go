// Package podmap decides which pods hold which GPU on this node. It unites two
// witnesses: kubelet's PodResources listing (devices allocated to a pod, known
// before the workload's first CUDA call) and the GPU processes NVML reports,
// mapped to their pods through /proc/<pid>/cgroup (a pod that reached a GPU
// without asking the device plugin). A process only ever adds a pod to a GPU;
// it never takes away what PodResources said.
//
// Pods are keyed by UID: a cgroup names a pod by UID only, and a UID, unlike a
// namespace/name, is never reused by the pod's successor. PodResources names
// pods by namespace/name, so the caller hands in a lookup from its pod cache;
// the same lookup drops pods that left the node or reached a terminal phase,
// which PodResources cannot tell.
//
// It never talks to NVML (the caller hands in NVML's processes and the lookups
// only NVML can answer: a MIG device's parent, a GPU index's UUID), never reads
// the API server, and never changes anything on the node. Everything read from
// /proc and from kubelet is treated as untrusted: it is validated, bounded, and
// never panics the agent.
package podmap
