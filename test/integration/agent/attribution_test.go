package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
)

// sneakyPod creates a pod with an admitted limit that asked for no GPU (as
// with NVIDIA_VISIBLE_DEVICES=all), and puts a process of it, pid, on GPU gpu:
// in the fake NVML's process list and, for the agent's --proc, a
// /proc/<pid>/cgroup that names the pod's real UID.
func sneakyPod(t *testing.T, n *node, name string, pid, gpu int) (*corev1.Pod, string) {
	t.Helper()
	p := testpod.MakePod(name, "llm").NodeName(nodeName).Limit("200").Stamp("200").Obj()
	if err := k8s.Create(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), p, client.GracePeriodSeconds(0)) })
	proc := filepath.Join(n.dir, "proc")
	cgroup := fmt.Sprintf("0::/kubepods/besteffort/pod%s/0d59b6ed52311ae2491e8a63eb1cbbd693121198727f0952849828e63b2b586f\n", p.UID)
	if err := os.MkdirAll(filepath.Join(proc, fmt.Sprint(pid)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, fmt.Sprint(pid), "cgroup"), []byte(cgroup), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := nvmlfake.NewFromFile(n.nvml)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetProcesses(nvmlfake.UUID(gpu), nvmlctl.Process{Kind: nvmlctl.Compute, PID: pid}); err != nil {
		t.Fatal(err)
	}
	return p, proc
}

// TestStrayProcessNeverSetsACap: a process of a pod kubelet allocated no
// GPU runs on another pod's GPU; its pod's limit never caps that GPU, and
// the pod is told (UnallocatedGPUProcess) and the process counted.
func TestStrayProcessNeverSetsACap(t *testing.T) {
	n := newNode(t)
	victim := testpod.MakePod("victim", "llm").GPU(1).NodeName(nodeName).Obj() // GPU 0, no limit
	n.kubelet.SetPods(podresourcestest.Pod("llm", "victim", podresourcestest.Container("worker",
		podresourcestest.Devices(policy.ResourceGPU, nvmlfake.UUID(0)))))
	if err := k8s.Create(t.Context(), victim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), victim, client.GracePeriodSeconds(0)) })
	sneaky, proc := sneakyPod(t, n, "sneaky", 4242, 0)
	n.start("200ms", "--proc", proc)

	n.eventually("an UnallocatedGPUProcess Warning on the sneaky pod", func() (bool, string) {
		var list eventsv1.EventList
		if err := k8s.List(t.Context(), &list, client.InNamespace("llm")); err != nil {
			return false, err.Error()
		}
		for _, e := range list.Items {
			if e.Regarding.UID == sneaky.UID && e.Reason == "UnallocatedGPUProcess" && e.Type == corev1.EventTypeWarning {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(list.Items))
	})
	start := n.cycles()
	n.eventually("10 more cycles", func() (bool, string) { return n.cycles() >= start+10, fmt.Sprint(n.cycles() - start) })
	if got := n.limitW(0); got != 700 {
		t.Errorf("GPU 0 at %d W: the stray process's pod capped a GPU kubelet did not allocate it", got)
	}
	gpu0 := fmt.Sprintf("gpu=%q", nvmlfake.UUID(0))
	if got := scrape(t, "http://"+n.metrics+"/metrics", "dynamo_power_agent_unallocated_processes_total", []string{gpu0}); got != 1 {
		t.Errorf("dynamo_power_agent_unallocated_processes_total{%s} = %v; want 1 (counted once)", gpu0, got)
	}
}

// TestRequirePodResources: on a kubelet without PodResources (no socket),
// the agent falls back to attributing GPUs by their processes, unless
// --require-pod-resources refuses: then it changes no GPU and is not ready.
func TestRequirePodResources(t *testing.T) {
	t.Run("fallback: the process's pod caps the GPU it runs on", func(t *testing.T) {
		n := newNode(t)
		_, proc := sneakyPod(t, n, "fallback", 4343, 1)
		n.start("200ms", "--proc", proc, "--pod-resources-socket", filepath.Join(n.dir, "no-kubelet.sock"))
		n.limitBecomes(1, 200)
	})
	t.Run("--require-pod-resources: nothing changes, not ready", func(t *testing.T) {
		n := newNode(t)
		_, proc := sneakyPod(t, n, "required", 4444, 1)
		n.launch("200ms", "--proc", proc, "--pod-resources-socket", filepath.Join(n.dir, "no-kubelet.sock"), "--require-pod-resources")
		log := filepath.Join(n.dir, "agent.log")
		n.eventually("a cycle refused for --require-pod-resources", func() (bool, string) {
			b, _ := os.ReadFile(log)
			return strings.Count(string(b), "--require-pod-resources refuses") >= 3, "not yet in the log"
		})
		if got := n.limitW(1); got != 700 {
			t.Errorf("GPU 1 at %d W; want it untouched at 700 W", got)
		}
		if ok, status := envtestenv.Ready(n.probe); ok {
			t.Errorf("/readyz %s; want it failing", status)
		}
	})
}
