package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// CacheOptions trims cached nodes and pods to what admission reads.
func CacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Node{}: {Transform: TrimNode},
		&corev1.Pod{}:  {Transform: TrimPod},
	}}
}

// ServerOptions serves TLS 1.2 or newer over HTTP/1.1 only (HTTP/2 is off:
// CVE-2023-44487, CVE-2023-39325), with certificates from certDir reloaded
// when they change.
func ServerOptions(host string, port int, certDir string) webhook.Options {
	return webhook.Options{
		Host: host, Port: port, CertDir: certDir,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.MinVersion = tls.VersionTLS12
			c.NextProtos = []string{"http/1.1"}
		}},
	}
}

// Setup wires the webhooks into mgr: the node and pod informers, the node
// index, both handlers, their metrics (registered with reg) and a readiness
// check that passes once the webhook server listens and both caches synced.
func Setup(ctx context.Context, mgr manager.Manager, admit *policy.Admission, reg prometheus.Registerer) error {
	nodes := NewNodeIndex()
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
	podInformer, err := mgr.GetCache().GetInformer(ctx, &corev1.Pod{}, cache.BlockUntilSynced(false))
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}

	m := NewMetrics(reg)
	server := mgr.GetWebhookServer()
	server.Register(MutatePath, &webhook.Admission{Handler: &Mutator{Policy: admit, Cluster: nodes, Metrics: m}})
	server.Register(ValidatePath, &webhook.Admission{Handler: &Validator{Policy: admit, Cluster: nodes, Metrics: m}})

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook-server", server.StartedChecker()); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("caches", func(*http.Request) error {
		if !indexed.HasSynced() || !podInformer.HasSynced() {
			return errors.New("node and pod caches have not synced yet")
		}
		return nil
	})
}
