// Package nodeindex is the webhook's view of the cluster's nodes: Index,
// the GPU product label of each node and the distinct products (a
// policy.Cluster), kept current by a node informer through EventHandler, and
// Trim, the node cache's transform that keeps only the name and that label.
package nodeindex
