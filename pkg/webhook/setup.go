package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	resourcev1 "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	powerv1alpha1 "github.com/dynamo-power/gpu-power/api/v1alpha1"
	"github.com/dynamo-power/gpu-power/pkg/budget"
	"github.com/dynamo-power/gpu-power/pkg/draindex"
	"github.com/dynamo-power/gpu-power/pkg/nodeindex"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// CacheOptions trims cached nodes and namespaces to what admission reads.
// Pods are not in the manager's cache: a podindex.Index keeps far less of
// each (Setup).
func CacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Node{}:              {Transform: nodeindex.Trim},
		&corev1.Namespace{}:         {Transform: TrimNamespace},
		&resourcev1.DeviceClass{}:   {Transform: draindex.TrimClass},
		&resourcev1.ResourceSlice{}: {Transform: draindex.TrimSlice},
	}}
}

// ClientOptions make the manager's client read pods from the API server, so
// that no code path can start a second, full pod cache by reading one.
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Pod{}}}}
}

// ServerOptions serves TLS 1.2 or newer over HTTP/1.1 only (HTTP/2 is off:
// CVE-2023-44487, CVE-2023-39325), with certificates from certDir reloaded
// when they change. A client certificate is asked for, not required: the
// API server may send none, a replica forwarding reservations sends its
// own. NewServer with a ClientAuth CA requires one.
func ServerOptions(host string, port int, certDir string) webhook.Options {
	return webhook.Options{
		Host: host, Port: port, CertDir: certDir,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.MinVersion = tls.VersionTLS12
			c.NextProtos = []string{"http/1.1"}
			c.ClientAuth = tls.RequestClientCert
		}},
	}
}

// Setup wires the webhooks into mgr: the informers (nodes, pods, namespaces,
// budgets), the node index, both handlers with budget enforcement, the
// leader-elected budget reconciler, metrics (registered with reg), and a
// readiness check that passes once the webhook server listens and every
// cache has synced.
func Setup(ctx context.Context, mgr manager.Manager, admit *policy.Admission, reg prometheus.Registerer, o budget.Options) error {
	nodes := nodeindex.New()
	nodeInformer, err := mgr.GetCache().GetInformer(ctx, &corev1.Node{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	// The registration has synced once the index holds every node, which is
	// when admission can trust it, not merely when the informer has listed.
	indexed, err := nodeInformer.AddEventHandler(nodes.EventHandler())
	if err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	synced := []interface{ HasSynced() bool }{indexed}
	dra, draSynced, err := watchDRA(ctx, mgr, nodes)
	if err != nil {
		return err
	}
	synced = append(synced, draSynced...)
	var claims *ClaimResolver
	if dra != nil {
		claims = &ClaimResolver{API: mgr.GetAPIReader(), DRA: dra}
	}
	for _, obj := range []client.Object{&corev1.Namespace{}, &powerv1alpha1.GPUPowerBudget{}} {
		inf, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
		synced = append(synced, inf)
	}
	pods := podindex.New()
	pods.Validated = admit.StampKey.Validated
	pods.ClaimsSigned = admit.StampKey.ClaimsSigned
	podFeed, err := newPodFeed(mgr, pods)
	if err != nil {
		return err
	}
	synced = append(synced, pods)

	ledger, err := budget.Setup(mgr, pods, podFeed.ResourceVersion, admit.Catalog, nodes, reg, o)
	if err != nil {
		return err
	}
	m := NewMetrics(reg)
	server := mgr.GetWebhookServer()
	server.Register(MutatePath, NewReview(&Mutator{Policy: admit, Cluster: nodes, Budgets: ledger, Claims: claims, Metrics: m}))
	server.Register(ValidatePath, NewReview(&Validator{Policy: admit, Cluster: nodes, Budgets: ledger, Claims: claims, Metrics: m}))
	server.Register(BudgetValidatePath, &webhook.Admission{Handler: BudgetValidator{}})
	server.Register(ClaimValidatePath, &webhook.Admission{Handler: &ClaimValidator{Claims: claims, API: mgr.GetAPIReader(), Budgets: ledger}})

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	started := server.StartedChecker()
	if err := mgr.AddReadyzCheck("webhook-server", started); err != nil {
		return err
	}
	cachesSynced := func(*http.Request) error {
		for _, s := range synced {
			if !s.HasSynced() {
				return errors.New("node, pod, namespace and budget caches have not synced yet")
			}
		}
		return nil
	}
	if err := mgr.AddReadyzCheck("caches", cachesSynced); err != nil {
		return err
	}
	// Readiness as a series: an alert can tell "no replica ready" from "a
	// replica scraped", which up alone cannot.
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "dynamo_power_webhook_ready",
		Help: "1 when this replica is ready to admit (what /readyz checks: the webhook server answers, every cache has synced), else 0.",
	}, func() float64 {
		if started(nil) != nil || cachesSynced(nil) != nil {
			return 0
		}
		return 1
	}))
}

// watchDRA feeds the node index's view of DRA (pkg/draindex) from
// DeviceClass and ResourceSlice informers, and returns it with their
// registrations for readiness. On an API server without resource.k8s.io/v1
// no pod gets GPUs through DRA, nothing is watched, and the index is nil.
func watchDRA(ctx context.Context, mgr manager.Manager, nodes *nodeindex.Index) (*draindex.Index, []interface{ HasSynced() bool }, error) {
	log := mgr.GetLogger().WithName("dra")
	gk := schema.GroupKind{Group: resourcev1.GroupName, Kind: "ResourceSlice"}
	if _, err := mgr.GetRESTMapper().RESTMapping(gk, resourcev1.SchemeGroupVersion.Version); err != nil {
		if meta.IsNoMatchError(err) {
			log.Info("The API server serves no resource.k8s.io/v1: pods' GPUs are checked as the device plugin's only")
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("resource.k8s.io/v1: %w", err)
	}
	dra := draindex.New(log)
	var synced []interface{ HasSynced() bool }
	for obj, h := range map[client.Object]toolscache.ResourceEventHandler{
		&resourcev1.DeviceClass{}:   dra.ClassHandler(),
		&resourcev1.ResourceSlice{}: dra.SliceHandler(),
	} {
		inf, err := mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			return nil, nil, fmt.Errorf("informer for %T: %w", obj, err)
		}
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return nil, nil, fmt.Errorf("informer for %T: %w", obj, err)
		}
		synced = append(synced, reg)
	}
	nodes.DRA = dra
	return dra, synced, nil
}

// newPodFeed starts keeping pods current on every replica, read as protobuf
// (cheaper to decode than JSON for the hundred thousand pods of a large
// cluster's initial list) and uncompressed: the API server gzips the watch
// of every pod event, and inflating it cost each replica 4% of its CPU under
// admission load (docs/benchmarks.md), for bytes that cross a cluster's own
// network.
func newPodFeed(mgr manager.Manager, pods *podindex.Index) (*podindex.Feed, error) {
	cfg := rest.CopyConfig(mgr.GetConfig())
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.DisableCompression = true
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("pod client: %w", err)
	}
	feed := podindex.NewFeed(pods, cs)
	return feed, mgr.Add(feed)
}

// TrimNamespace keeps a namespace's name and labels: budgets select by label.
func TrimNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion, Labels: ns.Labels,
	}}, nil
}
