// Package podindex keeps the webhook's view of every pod in the cluster in a
// few hundred bytes a pod, where a cached corev1.Pod costs kilobytes.
//
// It holds:
//   - Index, a client-go reflector store: for each pod its UID (so admission
//     can tell a taken name), and for a pod that requests GPUs what its
//     budget charge depends on (policy.Chargeable; a limit only when
//     Validated says it is the webhook's; claims' counts, charged as no
//     limit unless ClaimsSigned) and whether it finished. Pods without GPUs
//     are never decoded beyond that; a GPU pod's record is read
//     once, when the pod is stored or changes. OnChange wakes the budget
//     reconciler only for changes that can move a budget.
//   - Feed, which keeps an Index current from the API server through a
//     reflector (streamed initial list, then a watch), as a manager runnable
//     on every replica, and reports the resourceVersion the index has
//     stored up to.
package podindex
