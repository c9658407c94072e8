package kube_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"github.com/dynamo-power/gpu-power/internal/testlog"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube/kubetest"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

func TestNewKube(t *testing.T) {
	var mu sync.Mutex
	var auth string
	_, srv := kubetest.APIServer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auth = r.Header.Get("Authorization")
		mu.Unlock()
		kubetest.WriteJSON(w, http.StatusOK, map[string]string{"major": "1"})
	})
	good := kubetest.Kubeconfig(t, srv)
	other := httptest.NewTLSServer(http.NotFoundHandler())
	other.Close()
	elsewhere := kubetest.Kubeconfig(t, other)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		name, flag, env string
		wantErr         string
	}{
		{name: "--kubeconfig", flag: good},
		{name: "$KUBECONFIG when no --kubeconfig", env: good},
		{name: "--kubeconfig wins over $KUBECONFIG", flag: good, env: elsewhere},
		{name: "--kubeconfig names a missing file", flag: missing, wantErr: "kubeconfig: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KUBECONFIG", tc.env)
			mu.Lock()
			auth = ""
			mu.Unlock()
			k, err := kube.New(tc.flag)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("kube.New: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := k.APIReachable(t.Context()); err != nil {
				t.Fatalf("API check: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if auth != "Bearer agent-token" {
				t.Errorf("Authorization %q, want the kubeconfig's token", auth)
			}
		})
	}
}

func TestAPIReachable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		code    int // 0: nothing listens
		wantErr bool
	}{
		{name: "version answered", code: http.StatusOK},
		{name: "API server failing", code: http.StatusInternalServerError, wantErr: true},
		{name: "API server down", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k, srv := kubetest.APIServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodGet || r.URL.Path != "/version" {
					t.Errorf("%s %s, want GET /version", r.Method, r.URL.Path)
				}
				if tc.code != http.StatusOK {
					kubetest.WriteStatus(w, tc.code)
					return
				}
				kubetest.WriteJSON(w, tc.code, map[string]string{"major": "1", "minor": "34"})
			})
			if tc.code == 0 {
				srv.Close()
			}
			if err := k.APIReachable(t.Context()); (err != nil) != tc.wantErr {
				t.Errorf("apiReachable: %v, want error %t", err, tc.wantErr)
			}
		})
	}
}

// TestSuccessor: what shutdown reads (the DaemonSet, then the node) and
// decides, answer by answer of the API server.
func TestSuccessor(t *testing.T) {
	deleted := metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	labelled := node(map[string]string{"nvidia.com/gpu.present": "true"})
	for _, tc := range []struct {
		name        string
		ds, node    any // a body, an HTTP status code, or a string that is not JSON
		wantKeep    bool
		wantWhy     string
		wantErr     string
		wantNodeGET bool
	}{
		{name: "rolling update: DaemonSet there, node still selected", ds: daemonSet(nil), node: labelled, wantKeep: true, wantNodeGET: true},
		{name: "node left the DaemonSet: lost its label", ds: daemonSet(nil), node: node(nil), wantWhy: "nodeSelector", wantNodeGET: true},
		{name: "node deleted", ds: daemonSet(nil), node: http.StatusNotFound, wantWhy: "node deleted", wantNodeGET: true},
		{name: "node unreadable: cannot tell", ds: daemonSet(nil), node: http.StatusForbidden, wantErr: "read node gpu-1", wantNodeGET: true},
		{name: "uninstall: DaemonSet being deleted, node not read", ds: daemonSet(&deleted), wantWhy: "being deleted"},
		{name: "uninstall: DaemonSet gone", ds: http.StatusNotFound, wantWhy: "DaemonSet deleted"},
		{name: "uninstall: RBAC gone with it", ds: http.StatusForbidden, wantWhy: "DaemonSet deleted"},
		{name: "uninstall: ServiceAccount deleted first, its token refused", ds: http.StatusUnauthorized, wantWhy: "DaemonSet deleted"},
		{name: "API server failing: cannot tell", ds: http.StatusServiceUnavailable, wantErr: "read DaemonSet dynamo-system/power-agent: the server is currently unable"},
		{name: "answer that is not JSON", ds: "<html>", wantErr: "read DaemonSet dynamo-system/power-agent: decode the answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var nodeGET bool
			k, _ := kubetest.APIServer(t, func(w http.ResponseWriter, r *http.Request) {
				var answer any
				switch r.URL.Path {
				case "/apis/apps/v1/namespaces/dynamo-system/daemonsets/power-agent":
					answer = tc.ds
				case "/api/v1/nodes/gpu-1":
					answer, nodeGET = tc.node, true
				default:
					t.Errorf("%s %s: not a request shutdown makes", r.Method, r.URL.Path)
				}
				if r.Method != http.MethodGet {
					t.Errorf("%s %s, want GET", r.Method, r.URL.Path)
				}
				switch body := answer.(type) {
				case int:
					kubetest.WriteStatus(w, body)
				case string:
					w.WriteHeader(http.StatusOK)
					_, _ = w.Write([]byte(body))
				default:
					kubetest.WriteJSON(w, http.StatusOK, body)
				}
			})
			keep, why, err := k.SuccessorWillRun(t.Context(), "dynamo-system", "power-agent", "gpu-1")
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("successor: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("successor: error %v, want one containing %q", err, tc.wantErr)
			}
			if err == nil && (keep != tc.wantKeep || !strings.Contains(why, tc.wantWhy)) {
				t.Errorf("successor = %v, %q; want %v, %q", keep, why, tc.wantKeep, tc.wantWhy)
			}
			if nodeGET != tc.wantNodeGET {
				t.Errorf("node read: %v, want %v", nodeGET, tc.wantNodeGET)
			}
		})
	}
}

// daemonSet is the shipped DaemonSet as the API server returns it.
func daemonSet(deleted *metav1.Time) map[string]any {
	return map[string]any{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metav1.ObjectMeta{
		Name: "power-agent", Namespace: "dynamo-system", UID: "ds-1", DeletionTimestamp: deleted,
	}, "spec": map[string]any{"template": map[string]any{"spec": corev1.PodSpec{
		NodeSelector: map[string]string{"nvidia.com/gpu.present": "true"},
		Tolerations:  []corev1.Toleration{{Key: "nvidia.com/gpu", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		Containers:   []corev1.Container{{Name: "agent", Image: "ghcr.io/dynamo-power/power-agent:v0.1.0"}},
	}}}}
}

func node(labels map[string]string) corev1.Node {
	return corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}, ObjectMeta: metav1.ObjectMeta{Name: "gpu-1", Labels: labels}}
}

// podsServer serves one pod of node gpu-1 to a list, or to a watch that
// sends initial events (client-go's WatchListClient), and keeps a watch open
// until the agent ends it. It fails a request for any other node's pods.
func podsServer(t *testing.T) http.HandlerFunc {
	pod := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "decode-0", Namespace: "llm", UID: types.UID("pod-1"), ResourceVersion: "1"},
		Spec:       corev1.PodSpec{NodeName: "gpu-1"},
	}
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/api/v1/pods" || q.Get("fieldSelector") != "spec.nodeName=gpu-1" {
			t.Errorf("GET %s, want the pods of node gpu-1 alone", r.URL)
			kubetest.WriteStatus(w, http.StatusBadRequest)
			return
		}
		if q.Get("watch") != "true" {
			kubetest.WriteJSON(w, http.StatusOK, corev1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"},
				ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: []corev1.Pod{pod}})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if q.Get("sendInitialEvents") == "true" {
			end := corev1.Pod{TypeMeta: pod.TypeMeta, ObjectMeta: metav1.ObjectMeta{ResourceVersion: "1",
				Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}}
			enc := json.NewEncoder(w)
			_ = enc.Encode(map[string]any{"type": "ADDED", "object": pod})
			_ = enc.Encode(map[string]any{"type": "BOOKMARK", "object": end})
		}
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}
}

func TestSyncPods(t *testing.T) {
	t.Run("the node's pods listed", func(t *testing.T) {
		k, _ := kubetest.APIServer(t, podsServer(t))
		pods := k.PodInformer("gpu-1")
		if !kube.Sync(stopAtEnd(t.Context(), t, pods), testlog.New(t).Logger, pods) {
			t.Fatal("the pod cache did not sync")
		}
		obj, ok, err := pods.GetIndexer().GetByKey("llm/decode-0")
		if !ok || err != nil {
			t.Fatalf("pod llm/decode-0 not in the cache (%v); cache holds %v", err, pods.GetIndexer().ListKeys())
		}
		if p := obj.(*corev1.Pod); p.UID != "pod-1" || p.Spec.NodeName != "" {
			t.Errorf("the cache holds %+v; want the pod trimmed to what the agent reads", p)
		}
	})
	t.Run("API server failing: gives up when ctx ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		k, _ := kubetest.APIServer(t, func(w http.ResponseWriter, _ *http.Request) {
			cancel() // the agent is stopped while it waits
			kubetest.WriteStatus(w, http.StatusServiceUnavailable)
		})
		pods := k.PodInformer("gpu-1")
		if kube.Sync(stopAtEnd(ctx, t, pods), testlog.New(t).Logger, pods) {
			t.Error("synced without an answer")
		}
	})
}

// stopAtEnd is a ctx for the informer that ends with parent or the test,
// which then waits for the informer to stop: its requests end with the test.
func stopAtEnd(parent context.Context, t *testing.T, informer cache.SharedIndexInformer) context.Context {
	ctx, cancel := context.WithCancel(parent)
	t.Cleanup(func() {
		cancel()
		// t.Context() has ended by now: the wait has a context of its own.
		if err := poll.Until(context.Background(), poll.Opts{Timeout: 10 * time.Second}, "the pod informer to stop once ctx ended",
			func(context.Context) (bool, string, error) { return informer.IsStopped(), "", nil }); err != nil {
			t.Error(err)
		}
	})
	return ctx
}
