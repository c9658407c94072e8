// Package draindex is the webhook's view of dynamic resource allocation
// (DRA): Index answers, for an extended resource a DeviceClass serves
// (its extendedResourceName, or deviceclass.resource.kubernetes.io/<class>),
// which NVIDIA GPU products the published devices its selectors match are,
// on each node (Products, policy.Cluster.DRAProducts through pkg/nodeindex).
// ClassHandler and SliceHandler keep it in step with DeviceClass and
// ResourceSlice informers, whose caches TrimClass and TrimSlice keep small.
//
// Selectors are evaluated with the scheduler's own CEL library
// (k8s.io/dynamic-resource-allocation/cel) when a class or slice changes, not
// per admission. Only the newest generation of a pool counts. A device's
// product is its productName attribute as the catalog keys it
// (policy.DRAProduct); only NVIDIA's driver's GPUs and MIG devices have one.
package draindex
