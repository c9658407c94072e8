package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// kube is the agent's whole view of the API server: one REST client over a
// scheme of core/v1 alone. controller-runtime and the typed clientset would
// link and register every API group's types, and those pages are most of the
// agent's memory on every GPU node (docs/benchmarks.md).
type kube struct {
	scheme *runtime.Scheme
	rest   *rest.RESTClient
}

// newKube connects as controller-runtime did: --kubeconfig, then $KUBECONFIG
// or ~/.kube/config, then the pod's service account.
func newKube(kubeconfig string) (*kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	// controller-runtime's rate, which the agent ran with: client-go's 5/s
	// would hold back the API check of a short --interval.
	cfg.QPS, cfg.Burst = 20, 30
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	cfg.APIPath, cfg.GroupVersion = "/api", &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	c, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return &kube{scheme: scheme, rest: c}, nil
}

// podInformer keeps this node's pods: an initial list, then a watch, and no
// resync, so no periodic LIST. It keeps each pod trimmed to what the agent
// reads (trimPod).
func (k *kube) podInformer(node string) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(k.rest, "pods", metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", node))
	informer := cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{})
	if err := informer.SetTransform(trimPod); err != nil {
		panic(err) // only fails on a started informer
	}
	return informer
}

// maxKeptAnnotation bounds a power annotation's value in the cache. A limit
// has at most 6 digits (policy.ParseLimit), so a longer value is invalid
// whatever follows, and the agent quotes it in Events.
const maxKeptAnnotation = 64

// trimPod keeps of a pod exactly what the agent reads: its name, namespace,
// UID and resourceVersion (Events' reference), its creationTimestamp (which a
// stamp's signature is checked against), its three power annotations,
// its phase and start time (the field selector already says its node). A pod on a GPU node can be a megabyte
// of env and annotations, and a node holds a hundred of them; the agent would
// otherwise keep them all. TestTrimPodKeepsWhatTheAgentReads fails when the
// agent starts reading something dropped here.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone holds a pod already trimmed
	}
	var annotations map[string]string
	for _, key := range []string{policy.AnnotationPowerLimit, policy.AnnotationPowerLimitValidated, policy.AnnotationPowerLimitSignature} {
		if v, ok := p.Annotations[key]; ok {
			if len(v) > maxKeptAnnotation {
				v = v[:maxKeptAnnotation] + "..."
			}
			if annotations == nil {
				annotations = map[string]string{}
			}
			annotations[key] = v
		}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, CreationTimestamp: p.CreationTimestamp, Annotations: annotations},
		Status: corev1.PodStatus{Phase: p.Status.Phase, StartTime: p.Status.StartTime},
	}, nil
}

// syncPods runs the pod informer until ctx is done and waits for its first
// full view of the node; false when ctx ends first.
func syncPods(ctx context.Context, log logr.Logger, pods cache.SharedIndexInformer) bool {
	go pods.Run(ctx.Done())
	return cache.WaitForNamedCacheSyncWithContext(klog.NewContext(ctx, log), pods.HasSynced)
}

// apiReachable is one small GET per cycle; the version endpoint is cheap for
// the API server.
func (k *kube) apiReachable(ctx context.Context) error {
	_, err := k.rest.Get().AbsPath("/version").Timeout(5 * time.Second).Do(ctx).Raw()
	return err
}

// daemonSet reads what of the agent's DaemonSet says where it runs pods:
// an API error (NotFound, Forbidden) when it cannot. It decodes into
// agent.DaemonSet's fields, so the agent links no apps/v1 types.
func (k *kube) daemonSet(ctx context.Context, namespace, name string) (*agent.DaemonSet, error) {
	raw, err := k.rest.Get().AbsPath("/apis/apps/v1/namespaces", namespace, "daemonsets", name).Do(ctx).Raw()
	if err != nil {
		return nil, err
	}
	var ds struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
		Spec     struct {
			Template struct {
				Spec corev1.PodSpec `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(raw, &ds); err != nil {
		return nil, fmt.Errorf("decode the answer: %w", err)
	}
	return &agent.DaemonSet{Deleting: ds.Metadata.DeletionTimestamp != nil, Pod: ds.Spec.Template.Spec}, nil
}

// node reads the agent's node (its labels and taints decide whether the
// DaemonSet runs a successor there).
func (k *kube) node(ctx context.Context, name string) (*corev1.Node, error) {
	var n corev1.Node
	if err := k.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(&n); err != nil {
		return nil, err
	}
	return &n, nil
}
