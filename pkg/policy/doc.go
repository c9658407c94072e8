// Package policy holds every decision about GPU power limits that can be made
// from the objects alone. It does no I/O and keeps no state; callers hand it
// the pod and a read-only view of the cluster, so every rule here is a table
// test. By file:
//
//   - keys.go: the names users and other components type (annotations,
//     labels, resources) and their field paths.
//   - limit.go: the annotation grammar (ParseLimit, ValidateLimitSyntax).
//   - demand.go: how many GPUs a pod holds, and of which kind (DemandOf).
//   - products.go: which GPU products a pod can land on (CandidatesOf,
//     PlacementOf) and how a product label is normalised.
//   - catalog.go, catalog.csv, bounds.go: the products' settable ranges, the
//     bounds over a pod's candidates, and the milliwatt/watt conversions
//     (Milliwatts.WattsDown, WattsUp, WattsExact; Watts.MW).
//   - defaults.go: the default limit a pod gets (DefaultRule).
//   - admission.go: the verdict on a pod at admission (Admission.Mutate,
//     Admission.Validate).
//   - stamp.go: the signed stamp that tells an admitted limit from a typed
//     one, and the signature of the claims' GPU counts (SignClaims).
//   - claims.go: what a pod's ResourceClaims ask (ClaimsDemandOf), the
//     claims' GPU counts written on the pod (FormatClaimGPUs,
//     ParseClaimGPUs), and whether a claim made again fits the pods
//     admitted against it (ClaimReplacement).
//   - budget.go: the budget algorithm: what a pod costs a budget (its own
//     GPUs and each named claim's, Cost.Charges; ClaimKey), the
//     ledger's decision on each request (DecideReservation), the denial
//     message, and committed watts counted from live pods and reservations
//     (CountCommitted).
//   - gpucap.go: the per-GPU decision on a node: which cap a GPU gets from
//     the pods that hold it (ResolveGPU, Clamp).
//   - arith.go: saturating arithmetic for every sum of user numbers.
package policy
