// Package kube is the power agent's whole view of the API server: one REST
// client over a scheme of core/v1 alone (Client, New). controller-runtime and
// the typed clientset would link and register every API group's types, and
// those pages are most of the agent's memory on every GPU node
// (docs/benchmarks.md).
//
// Client makes every request the agent makes:
//
//   - PodInformer, SyncPods and OnChange: this node's pods, listed once and
//     then watched, each trimmed to what the agent reads;
//   - APIReachable: the small GET per cycle that tells a live API server from
//     a cache serving its last state;
//   - SuccessorWillRun: at shutdown, the DaemonSet and the node, to decide
//     whether another agent will run here (agent.SuccessorWillRun);
//   - Reference and PostEvent: what the Event recorder (pkg/agent/events)
//     needs to post an Event about a pod.
//
// kubetest stands in for the API server in tests.
package kube
