package podindex

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestIndexKeepsWhatBudgetsRead(t *testing.T) {
	const h100 = "NVIDIA-H100-80GB-HBM3"
	finished := testpod.MakePod("done", "llm").UID("u").GPU(2).Limit("300").Obj()
	finished.Status.Phase = corev1.PodSucceeded
	// nvidia.com/gpu may be served by DRA on some nodes (policy.Placement.DRA).
	gpuOnly := []corev1.ResourceName{policy.ResourceGPU}
	cases := []struct {
		name string
		pod  *corev1.Pod
		want Pod
	}{
		{"no GPU: its UID only", testpod.MakePod("web", "llm").UID("u").Limit("300").Obj(), Pod{UID: "u"}},
		{"GPU pod with a limit: no placement kept", testpod.MakePod("a", "llm").UID("u").GPU(4).Limit("300").NodeName("n1").Obj(),
			Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 4, Limit: 300}}}},
		{"invalid limit counts as none", testpod.MakePod("a", "llm").UID("u").GPU(1).Limit("03").NodeName("n1").Obj(),
			Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 1, Placement: &policy.Placement{Node: "n1", DRA: gpuOnly}}}}},
		{"unbound, unlimited, pinned by nodeSelector", testpod.MakePod("a", "llm").UID("u").GPU(1).Product(h100).Obj(),
			Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 1, Placement: &policy.Placement{Pinned: []string{h100}, PinnedBy: "nodeSelector"}}}}},
		{"unbound, unlimited, pinned by nothing", testpod.MakePod("a", "llm").UID("u").GPU(1).Obj(),
			Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 1, Placement: &policy.Placement{DRA: gpuOnly}}}}},
		{"sidecar and app GPUs add up", testpod.MakePod("a", "llm").UID("u").Sidecar("s", 1).Container("b", 2).Limit("200").Obj(),
			Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 3, Limit: 200}}}},
		{"finished", finished, Pod{UID: "u", GPU: &GPUPod{Chargeable: policy.Chargeable{GPUs: 2, Limit: 300}, Finished: true}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ix := New()
			if err := ix.Add(tc.pod); err != nil {
				t.Fatal(err)
			}
			got, ok := ix.Get(tc.pod.Namespace, tc.pod.Name)
			if !ok || !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Get = %+v (found %v); want %+v", describe(got), ok, describe(tc.want))
			}
			if pods, gpuPods := ix.Len(); pods != 1 || gpuPods != wantGPUPods(tc.want) {
				t.Errorf("Len = %d, %d", pods, gpuPods)
			}
		})
	}
}

func describe(p Pod) string {
	if p.GPU == nil {
		return fmt.Sprintf("{UID:%s}", p.UID)
	}
	return fmt.Sprintf("{UID:%s GPU:%+v placement:%+v}", p.UID, *p.GPU, p.GPU.Placement)
}

// TestOnChangeOnlyWhenABudgetCanMove follows pods through the events a
// cluster sends; only those that change what a budget charges may wake the
// reconciler: on a large cluster most pod events are status updates of pods
// without GPUs.
func TestOnChangeOnlyWhenABudgetCanMove(t *testing.T) {
	ix := New()
	calls := 0
	ix.OnChange(func() { calls++ })
	web := testpod.MakePod("web", "llm").UID("w").Obj()
	gpu := testpod.MakePod("gpu", "llm").UID("g").GPU(2).Limit("300").Obj()
	open := testpod.MakePod("open", "llm").UID("o").GPU(1).Obj()
	steps := []struct {
		name  string
		apply func() error
		wakes bool
	}{
		{"a pod without GPUs is stored", func() error { return ix.Add(web) }, false},
		{"it changes", func() error { c := web.DeepCopy(); c.Status.Phase = corev1.PodRunning; return ix.Update(c) }, false},
		{"a GPU pod is stored", func() error { return ix.Add(gpu) }, true},
		{"its status changes, its cost does not", func() error {
			c := gpu.DeepCopy()
			c.Status.Phase, c.Status.Conditions = corev1.PodRunning, []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
			return ix.Update(c)
		}, false},
		{"a limited GPU pod is bound: its cost does not depend on the node", func() error {
			c := gpu.DeepCopy()
			c.Spec.NodeName = "n1"
			return ix.Update(c)
		}, false},
		{"an unlimited GPU pod is stored", func() error { return ix.Add(open) }, true},
		{"it is bound: its cost is now its node's", func() error { c := open.DeepCopy(); c.Spec.NodeName = "n1"; return ix.Update(c) }, true},
		{"the GPU pod finishes", func() error { c := gpu.DeepCopy(); c.Status.Phase = corev1.PodFailed; return ix.Update(c) }, true},
		{"a pod of the same name and another UID replaces it", func() error {
			c := gpu.DeepCopy()
			c.UID = "g2"
			return ix.Update(c)
		}, true},
		{"the pod without GPUs goes", func() error { return ix.Delete(web) }, false},
		{"a pod never stored goes", func() error { return ix.Delete(testpod.MakePod("ghost", "llm").GPU(1).Obj()) }, false},
		{"the GPU pod goes, as a tombstone", func() error {
			return ix.Delete(toolscache.DeletedFinalStateUnknown{Key: "llm/gpu", Obj: gpu})
		}, true},
		{"a relist", func() error { return ix.Replace([]any{web}, "10") }, true},
	}
	for _, s := range steps {
		before := calls
		if err := s.apply(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if woke := calls > before; woke != s.wakes {
			t.Errorf("%s: woke the reconciler %v; want %v", s.name, woke, s.wakes)
		}
	}
	if pods, gpuPods := ix.Len(); pods != 1 || gpuPods != 0 {
		t.Errorf("after the relist: %d pods, %d GPU pods; want 1, 0", pods, gpuPods)
	}
}

// TestStreamedListKeepsEntries is what the reflector does while an initial
// list streams in: its temporary store keys what Transformer returns, then
// hands the index those entries, never whole pods.
func TestStreamedListKeepsEntries(t *testing.T) {
	ix := New()
	tmp := toolscache.NewStore(toolscache.DeletionHandlingMetaNamespaceKeyFunc, toolscache.WithTransformer(ix.Transformer()))
	pods := []*corev1.Pod{
		testpod.MakePod("a", "llm").UID("a").GPU(8).Limit("500").Obj(),
		testpod.MakePod("b", "llm").UID("b").Obj(),
		testpod.MakePod("a", "web").UID("c").Obj(),
	}
	for _, p := range pods {
		if err := tmp.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	for _, obj := range tmp.List() {
		if _, ok := obj.(*entry); !ok {
			t.Fatalf("the temporary store holds a %T; want the index's entries", obj)
		}
	}
	if _, ok, _ := tmp.GetByKey("web/a"); !ok {
		t.Errorf("temporary store keys: %v; want web/a among them", tmp.ListKeys())
	}
	if ix.HasSynced() {
		t.Fatal("synced before the first list")
	}
	if err := ix.Replace(tmp.List(), "7"); err != nil {
		t.Fatal(err)
	}
	if !ix.HasSynced() {
		t.Error("not synced after the first list")
	}
	var gpuUIDs []string
	ix.EachGPUPod("llm", func(uid types.UID, _ *GPUPod) { gpuUIDs = append(gpuUIDs, string(uid)) })
	if len(gpuUIDs) != 1 || gpuUIDs[0] != "a" {
		t.Errorf("GPU pods of llm: %v; want [a]", gpuUIDs)
	}
	if p, ok := ix.Get("web", "a"); !ok || p.UID != "c" || p.GPU != nil {
		t.Errorf("web/a = %+v, %v", p, ok)
	}
}

func TestStoreRefusesWhatIsNotAPod(t *testing.T) {
	ix := New()
	for _, obj := range []any{&corev1.Node{}, "llm/a", nil} {
		if err := ix.Add(obj); err == nil {
			t.Errorf("Add(%T) succeeded", obj)
		}
	}
	if err := ix.Replace([]any{&corev1.Namespace{}}, "1"); err == nil || ix.HasSynced() {
		t.Errorf("Replace with a namespace: err %v, synced %v", err, ix.HasSynced())
	}
}

// BenchmarkIndexBytes reports the live heap the index holds per pod, for GPU
// pods (one container, eight GPUs, a limit, bound) and for pods without GPUs,
// the two kinds of a large cluster (docs/benchmarks.md):
//
//	go test -run '^$' -bench IndexBytes -benchtime 1x ./pkg/podindex
func BenchmarkIndexBytes(b *testing.B) {
	const n = 20000
	for _, kind := range []struct {
		name string
		pod  func(i int) *corev1.Pod
	}{
		{"gpu-pods", func(i int) *corev1.Pod {
			return testpod.MakePod(fmt.Sprintf("decode-worker-%06d", i), fmt.Sprintf("team-%02d", i%20)).
				UID(fmt.Sprintf("3f1c2d4e-5a6b-4c7d-8e9f-%012d", i)).GPU(8).Limit("500").
				Label("app", "decode").NodeName(fmt.Sprintf("gpu-node-%04d", i%5000)).Obj()
		}},
		{"other-pods", func(i int) *corev1.Pod {
			return testpod.MakePod(fmt.Sprintf("web-frontend-%06d", i), fmt.Sprintf("apps-%02d", i%50)).
				UID(fmt.Sprintf("3f1c2d4e-5a6b-4c7d-8e9f-%012d", i)).Label("app", "web").
				NodeName(fmt.Sprintf("cpu-node-%04d", i%5000)).Obj()
		}},
	} {
		b.Run(kind.name, func(b *testing.B) {
			for range b.N {
				before := liveHeap()
				ix := New()
				for i := range n {
					if err := ix.Add(kind.pod(i)); err != nil {
						b.Fatal(err)
					}
				}
				after := liveHeap()
				b.ReportMetric(float64(after-before)/n, "B/pod")
				runtime.KeepAlive(ix)
			}
		})
	}
}

func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestUnvalidatedLimitIsChargedAsNone: a limit the webhook did not admit (no
// stamp, or one without its signature) caps nothing on the node, so the
// index charges the pod as one without a limit, by where it can land.
func TestUnvalidatedLimitIsChargedAsNone(t *testing.T) {
	ix := New()
	ix.Validated = func(p *corev1.Pod) bool {
		return p.Annotations[policy.AnnotationPowerLimitValidated] == p.Annotations[policy.AnnotationPowerLimit]
	}
	typed := testpod.MakePod("typed", "kube-system").UID("t").GPU(2).Limit("1").NodeName("n1").Obj()
	stamped := testpod.MakePod("stamped", "llm").UID("s").GPU(2).Limit("300").Stamp("300").NodeName("n1").Obj()
	for _, p := range []*corev1.Pod{typed, stamped} {
		if err := ix.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if p, _ := ix.Get("kube-system", "typed"); p.GPU == nil || p.GPU.Limit != 0 || p.GPU.Placement == nil || p.GPU.Placement.Node != "n1" {
		t.Errorf("an unvalidated 1 W limit: %s; want charged as no limit, on node n1", describe(p))
	}
	if p, _ := ix.Get("llm", "stamped"); p.GPU == nil || p.GPU.Limit != 300 || p.GPU.Placement != nil {
		t.Errorf("a validated limit: %s; want 300 W", describe(p))
	}
}

// BenchmarkWideAffinity is the index's cost for a pod whose required
// affinity repeats the product expression with thousands of values (half a
// megabyte of pod): linear, so such a pod cannot stall the reflector that
// every other pod event waits behind.
func BenchmarkWideAffinity(b *testing.B) {
	const n = 20000
	x, y := make([]string, n), make([]string, n)
	for i := range n {
		x[i], y[i] = fmt.Sprintf("p-%07d", i), fmt.Sprintf("p-%07d", n-i)
	}
	pod := testpod.MakePod("x", "llm").UID("u").GPU(1).Obj()
	pod.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: x},
			{Key: policy.LabelGPUProduct, Operator: corev1.NodeSelectorOpIn, Values: y},
		}}},
	}}}
	ix := New()
	for b.Loop() {
		if err := ix.Add(pod); err != nil {
			b.Fatal(err)
		}
	}
}

// Len returns how many pods the index holds, and how many of them request
// GPUs: what the tests count (nothing in the product needs it).
func (ix *Index) Len() (pods, gpuPods int) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	for _, byName := range ix.pods {
		for _, p := range byName {
			pods++
			if p.GPU != nil {
				gpuPods++
			}
		}
	}
	return pods, gpuPods
}

func wantGPUPods(p Pod) int {
	if p.GPU != nil {
		return 1
	}
	return 0
}
