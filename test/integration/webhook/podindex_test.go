package webhook_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/resourceversion"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// TestPodIndexFollowsTheAPIServer runs the webhook's pod index on the real
// API server: the first list streams in (watch-list), then the watch keeps
// it current, and its resourceVersion passes every write it has stored.
func TestPodIndexFollowsTheAPIServer(t *testing.T) {
	ctx := t.Context()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "podindex"}}
	if err := k8s.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// Admitted by the webhooks under test: a limit on one GPU.
	before := testpod.MakePod("before", ns.Name).GPU(1).Limit("300").Product("NVIDIA-H100-80GB-HBM3").Obj()
	web := testpod.MakePod("web", ns.Name).Obj()
	for _, p := range []*corev1.Pod{before, web} {
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		t.Fatal(err)
	}
	ix := podindex.New()
	feed := podindex.NewFeed(ix, cs)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { _ = feed.Start(runCtx) }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		poll.Eventually(t, time.Minute, what, func() (bool, string) { return cond(), "not yet" })
	}
	waitFor("the first list", ix.HasSynced)
	if p, ok := ix.Get(ns.Name, "before"); !ok || p.UID != before.UID || p.GPU == nil || p.GPU.GPUs != 1 || p.GPU.Limit != 300 {
		t.Errorf("a GPU pod stored before the index started: %+v, %v", p, ok)
	}
	if p, ok := ix.Get(ns.Name, "web"); !ok || p.UID != web.UID || p.GPU != nil {
		t.Errorf("a pod without GPUs: %+v, %v", p, ok)
	}

	after := testpod.MakePod("after", ns.Name).GPU(2).Limit("400").Product("NVIDIA-H100-80GB-HBM3").Obj()
	if err := k8s.Create(ctx, after); err != nil {
		t.Fatal(err)
	}
	waitFor("the watch to bring a new GPU pod", func() bool {
		p, ok := ix.Get(ns.Name, "after")
		return ok && p.GPU != nil && p.GPU.GPUs == 2
	})
	if c, err := resourceversion.CompareResourceVersion(feed.ResourceVersion(), after.ResourceVersion); err != nil || c < 0 {
		t.Errorf("index at resourceVersion %s after storing a pod written at %s (%v)", feed.ResourceVersion(), after.ResourceVersion, err)
	}
	if err := k8s.Delete(ctx, before, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	waitFor("the deletion", func() bool { _, ok := ix.Get(ns.Name, "before"); return !ok })
	var gpuPods []string
	ix.EachGPUPod(ns.Name, func(uid types.UID, _ *podindex.GPUPod) { gpuPods = append(gpuPods, string(uid)) })
	if len(gpuPods) != 1 || gpuPods[0] != string(after.UID) {
		t.Errorf("GPU pods of %s: %v; want only %s", ns.Name, gpuPods, after.UID)
	}
}
