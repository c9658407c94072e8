package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/reference"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Client is the agent's REST client of the API server, over core/v1 and,
// for the node's ResourceSlices, resource.k8s.io/v1 alone.
type Client struct {
	scheme *runtime.Scheme
	rest   *rest.RESTClient
	dra    *rest.RESTClient
}

// New connects as controller-runtime did: kubeconfig (--kubeconfig), then
// $KUBECONFIG or ~/.kube/config, then the pod's service account.
func New(kubeconfig string) (*Client, error) {
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
	if err := resourcev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	draCfg := rest.CopyConfig(cfg)
	cfg.APIPath, cfg.GroupVersion = "/api", &corev1.SchemeGroupVersion
	draCfg.APIPath, draCfg.GroupVersion = "/apis", &resourcev1.SchemeGroupVersion
	c, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	dra, err := rest.RESTClientFor(draCfg)
	if err != nil {
		return nil, fmt.Errorf("API client: %w", err)
	}
	return &Client{scheme: scheme, rest: c, dra: dra}, nil
}

// ServesDRA reports whether the API server serves resource.k8s.io/v1: on
// one that does not, no device comes from DRA and there are no
// ResourceSlices to watch.
func (c *Client) ServesDRA(ctx context.Context) (bool, error) {
	err := c.rest.Get().AbsPath("/apis", resourcev1.GroupName, resourcev1.SchemeGroupVersion.Version).Timeout(10 * time.Second).Do(ctx).Error()
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsNotFound(err):
		return false, nil
	}
	return false, fmt.Errorf("discover %s: %w", resourcev1.SchemeGroupVersion, err)
}

// SliceInformer keeps this node's ResourceSlices of NVIDIA's DRA driver
// (the GPU each device it allocates is): an initial list, then a watch,
// each slice trimmed to what the agent reads (trimSlice).
func (c *Client) SliceInformer(node string) cache.SharedIndexInformer {
	return nodeInformer(c.dra, "resourceslices", node, &resourcev1.ResourceSlice{}, trimSlice)
}

// trimSlice keeps of a ResourceSlice what podmap.DRAResolver reads: its
// driver, pool and generation, and each device's name with NVIDIA's type,
// uuid and parentUUID attributes; other drivers' slices keep no device.
func trimSlice(obj any) (any, error) {
	rs, ok := obj.(*resourcev1.ResourceSlice)
	if !ok {
		return obj, nil
	}
	out := &resourcev1.ResourceSlice{ObjectMeta: metav1.ObjectMeta{Name: rs.Name, UID: rs.UID, ResourceVersion: rs.ResourceVersion},
		Spec: resourcev1.ResourceSliceSpec{Driver: rs.Spec.Driver, Pool: rs.Spec.Pool, NodeName: rs.Spec.NodeName}}
	if rs.Spec.Driver != policy.DriverGPU {
		return out, nil
	}
	for _, d := range rs.Spec.Devices {
		kept := resourcev1.Device{Name: d.Name, Attributes: map[resourcev1.QualifiedName]resourcev1.DeviceAttribute{}}
		for name, a := range d.Attributes {
			switch strings.TrimPrefix(string(name), policy.DriverGPU+"/") {
			case "type", "uuid", "parentUUID":
				kept.Attributes[name] = a
			}
		}
		out.Spec.Devices = append(out.Spec.Devices, kept)
	}
	return out, nil
}

// PodInformer keeps this node's pods: an initial list, then a watch, and no
// resync, so no periodic LIST. It keeps each pod trimmed to what the agent
// reads (trimPod).
func (c *Client) PodInformer(node string) cache.SharedIndexInformer {
	return nodeInformer(c.rest, "pods", node, &corev1.Pod{}, trimPod)
}

// nodeInformer lists and watches the objects of resource on node (field
// spec.nodeName), each kept as trim leaves it; no resync, so no periodic
// LIST.
func nodeInformer(c *rest.RESTClient, resource, node string, obj runtime.Object, trim cache.TransformFunc) cache.SharedIndexInformer {
	lw := cache.NewListWatchFromClient(c, resource, metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", node))
	informer := cache.NewSharedIndexInformerWithOptions(lw, obj, cache.SharedIndexInformerOptions{})
	if err := informer.SetTransform(trim); err != nil {
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

// Sync runs informers until ctx is done and waits for their first full view
// of the node; false when ctx ends first.
func Sync(ctx context.Context, log logr.Logger, informers ...cache.SharedIndexInformer) bool {
	synced := make([]cache.InformerSynced, len(informers))
	for i, inf := range informers {
		go inf.Run(ctx.Done())
		synced[i] = inf.HasSynced
	}
	return cache.WaitForNamedCacheSyncWithContext(klog.NewContext(ctx, log), synced...)
}

// APIReachable is one small GET per cycle; the version endpoint is cheap for
// the API server.
func (c *Client) APIReachable(ctx context.Context) error {
	_, err := c.rest.Get().AbsPath("/version").Timeout(5 * time.Second).Do(ctx).Raw()
	return err
}

// SuccessorWillRun reads the agent's DaemonSet and its node and decides
// (agent.SuccessorWillRun) whether another agent will run on the node, and if
// not, why. It fails only when it cannot tell.
func (c *Client) SuccessorWillRun(ctx context.Context, namespace, daemonSet, nodeName string) (bool, string, error) {
	ds, err := c.daemonSet(ctx, namespace, daemonSet)
	switch {
	case apierrors.IsNotFound(err), apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		// Forbidden and Unauthorized too: `kubectl delete -f daemonset.yaml`
		// removes our RBAC, or our ServiceAccount and with it our token, with
		// the DaemonSet. No successor runs without them.
		ds = nil
	case err != nil:
		return false, "", fmt.Errorf("read DaemonSet %s/%s: %w", namespace, daemonSet, err)
	}
	var node *corev1.Node
	if ds != nil && !ds.Deleting {
		node, err = c.node(ctx, nodeName)
		switch {
		case apierrors.IsNotFound(err):
			node = nil // a deleted node: nothing schedules to it until its kubelet registers it again
		case err != nil:
			return false, "", fmt.Errorf("read node %s: %w", nodeName, err)
		}
	}
	keep, why := agent.SuccessorWillRun(ds, node)
	return keep, why, nil
}

// daemonSet reads what of the agent's DaemonSet says where it runs pods:
// an API error (NotFound, Forbidden) when it cannot. It decodes into
// agent.DaemonSet's fields, so the agent links no apps/v1 types.
func (c *Client) daemonSet(ctx context.Context, namespace, name string) (*agent.DaemonSet, error) {
	raw, err := c.rest.Get().AbsPath("/apis/apps/v1/namespaces", namespace, "daemonsets", name).Do(ctx).Raw()
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
func (c *Client) node(ctx context.Context, name string) (*corev1.Node, error) {
	var n corev1.Node
	if err := c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(&n); err != nil {
		return nil, err
	}
	return &n, nil
}

// Reference is an Event's reference to obj, a kind of the client's scheme.
func (c *Client) Reference(obj runtime.Object) (*corev1.ObjectReference, error) {
	return reference.GetReference(c.scheme, obj)
}

// PostEvent creates an events.k8s.io/v1 Event, body its JSON, in namespace.
func (c *Client) PostEvent(ctx context.Context, namespace string, body []byte) error {
	return c.rest.Post().AbsPath("/apis/events.k8s.io/v1/namespaces", namespace, "events").
		SetHeader("Content-Type", "application/json").Body(body).Timeout(10 * time.Second).Do(ctx).Error()
}

// NodeView is what the agent watches of its node: its pods and, where the
// API server serves DRA, its ResourceSlices.
type NodeView struct {
	Pods cache.SharedIndexInformer
	// Slices is nil on an API server without resource.k8s.io/v1.
	Slices cache.SharedIndexInformer
}

// NodeView makes the informers of node's view (not started: Sync).
func (c *Client) NodeView(ctx context.Context, node string) (*NodeView, error) {
	v := &NodeView{Pods: c.PodInformer(node)}
	dra, err := c.ServesDRA(ctx)
	if err != nil {
		return nil, err
	}
	if dra {
		v.Slices = c.SliceInformer(node)
	}
	return v, nil
}

func (v *NodeView) informers() []cache.SharedIndexInformer {
	if v.Slices == nil {
		return []cache.SharedIndexInformer{v.Pods}
	}
	return []cache.SharedIndexInformer{v.Pods, v.Slices}
}

// Sync runs the view's informers until ctx is done and waits for their first
// full view of the node; false when ctx ends first.
func (v *NodeView) Sync(ctx context.Context, log logr.Logger) bool {
	return Sync(ctx, log, v.informers()...)
}

// Synced reports whether every informer of the view has synced.
func (v *NodeView) Synced() bool {
	for _, inf := range v.informers() {
		if !inf.HasSynced() {
			return false
		}
	}
	return true
}

// ResourceSlices are the node's slices as last seen (none without DRA);
// the cache's own: read them, never change them.
func (v *NodeView) ResourceSlices() []*resourcev1.ResourceSlice {
	if v.Slices == nil {
		return nil
	}
	var out []*resourcev1.ResourceSlice
	for _, obj := range v.Slices.GetStore().List() {
		if rs, ok := obj.(*resourcev1.ResourceSlice); ok {
			out = append(out, rs)
		}
	}
	return out
}

// OnChange calls f on every change of a pod or slice of the view.
func (v *NodeView) OnChange(f func()) error {
	for _, inf := range v.informers() {
		if err := OnChange(inf, f); err != nil {
			return err
		}
	}
	return nil
}

// OnChange calls f on every object the informer adds, updates or deletes.
func OnChange(informer cache.SharedIndexInformer, f func()) error {
	_, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { f() },
		UpdateFunc: func(any, any) { f() },
		DeleteFunc: func(any) { f() },
	})
	return err
}
