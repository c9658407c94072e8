// Package policy holds every decision about GPU power limits that can be made
// from the objects alone: the annotation grammar, how many GPUs a pod holds,
// which GPU products it can land on, the settable range of those products, the
// default limit a pod gets, and the verdict on a pod at admission.
//
// It does no I/O and keeps no state; callers hand it the pod and a read-only
// view of the cluster, so every rule here is a table test.
package policy
