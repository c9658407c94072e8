package agent_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TestSoakMemoryWithFatPods measures the agent's memory with a full node of
// big pods: 110 pods (kubelet's default maximum) of about 1 MiB each, 250 KiB
// of annotations and 700 KiB of env, as a node of LLM workers with large
// config blobs carries. It logs RSS, its peak and the Go heap for
// docs/benchmarks.md: with 0 pods, once the 110 arrived, and for an agent
// started with them already there (its first list holds them all). Nothing is
// asserted about memory; it needs AGENT_MEMORY_SOAK=1 (it writes 110 MiB of
// pods to the API server, too much for every run of the suite).
func TestSoakMemoryWithFatPods(t *testing.T) {
	if os.Getenv("AGENT_MEMORY_SOAK") != "1" {
		t.Skip("a measurement, not a check: `make bench-agent-memory` (AGENT_MEMORY_SOAK=1) runs it")
	}
	const pods, cycles = soakPods, 40
	n := newNode(t)
	n.start("100ms")
	settle := func() {
		t.Helper()
		start := n.cycles()
		n.eventually(fmt.Sprintf("%d more cycles", cycles), func() (bool, string) {
			return n.cycles() >= start+cycles, fmt.Sprintf("%d cycles", n.cycles()-start)
		})
	}
	var rows []string
	measure := func(what string) {
		t.Helper()
		mem := n.memory()
		url := "http://" + n.metrics + "/metrics"
		rows = append(rows, fmt.Sprintf("| %s | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB |", what, mib(mem["VmRSS"]), mib(mem["VmHWM"]),
			mib(mem["RssAnon"]), mib(int64(scrape(t, url, "go_memstats_heap_inuse_bytes", nil))), mib(int64(scrape(t, url, "go_memstats_heap_alloc_bytes", nil)))))
	}
	settle()
	measure("0 pods on the node")

	for i := range pods {
		p := fatPod(i)
		if i == pods-1 { // the last one holds a GPU: its cap shows the agent has seen every pod before it
			n.kubelet.SetPods(podresourcestest.Pod("llm", p.Name, podresourcestest.Container("worker",
				podresourcestest.Devices(policy.ResourceGPU, nvmlfake.UUID(0)))))
		}
		if err := k8s.Create(t.Context(), p); err != nil {
			t.Fatalf("create pod %d: %v", i, err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), p, client.GracePeriodSeconds(0)) })
	}
	n.limitBecomes(0, 250)
	settle()
	measure(fmt.Sprintf("%d pods arrived while it ran", pods))

	n.stop()
	n.start("100ms")
	settle()
	measure(fmt.Sprintf("started with the %d pods there", pods))
	t.Logf("agent memory, %d pods of %.2f MiB each (%d cycles at 100 ms before each row):\n"+
		"| agent | RSS | peak RSS (VmHWM) | anonymous | heap in use | heap allocated |\n|---|---|---|---|---|---|\n%s",
		pods, float64(podSize(fatPod(0)))/(1<<20), cycles, strings.Join(rows, "\n"))
}

// soakPods is a full node: kubelet's default maxPods.
const soakPods = 110

// fatPod is pod i of the soak: about 250 KiB of annotations and 700 KiB of
// env; the last one is a GPU pod with an admitted limit.
func fatPod(i int) *corev1.Pod {
	w := testpod.MakePod(fmt.Sprintf("fat-%03d", i), "llm").NodeName(nodeName)
	blob := strings.Repeat("x", 50<<10)
	for a := range 5 {
		w.Annotation(fmt.Sprintf("example.com/config-%d", a), blob)
	}
	if i == soakPods-1 {
		w.GPU(1).Limit("250").Stamp("250")
	}
	p := w.Obj()
	value := strings.Repeat("v", 1000)
	for e := range 700 {
		p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: fmt.Sprintf("CONFIG_%04d", e), Value: value})
	}
	return p
}

func podSize(p *corev1.Pod) int {
	size := 0
	for k, v := range p.Annotations {
		size += len(k) + len(v)
	}
	for _, e := range p.Spec.Containers[0].Env {
		size += len(e.Name) + len(e.Value)
	}
	return size
}
