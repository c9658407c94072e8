package e2enode_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

// TestBothManifestsRunAsRealPods: the webhook's replicas and the agent pod
// run from the shipped manifests with the shipped images and settings, and
// are Ready through their own probes.
func TestBothManifestsRunAsRealPods(t *testing.T) {
	install(t)
	pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	webhookRef, _ := realnode.ShippedImage(filepath.Join(testdeploy.WebhookDir(), "30-deployment.yaml"))
	agentRef, _ := realnode.ShippedImage(testdeploy.AgentFile())
	var webhooks, agents int
	for _, p := range pods.Items {
		if !podReady(&p) {
			t.Errorf("pod %s is not Ready: %+v", p.Name, p.Status.Conditions)
		}
		switch p.Labels["app"] {
		case "power-webhook":
			webhooks++
			if got := p.Spec.Containers[0].Image; got != webhookRef {
				t.Errorf("webhook pod %s runs %s, want the shipped %s", p.Name, got, webhookRef)
			}
			if p.Spec.Containers[0].ReadinessProbe == nil {
				t.Errorf("webhook pod %s has no readiness probe", p.Name)
			}
		case "power-agent":
			agents++
			if got := p.Spec.Containers[0].Image; got != agentRef {
				t.Errorf("agent pod %s runs %s, want the shipped %s", p.Name, got, agentRef)
			}
			if !p.Spec.HostPID || p.Spec.RuntimeClassName == nil || *p.Spec.RuntimeClassName != "nvidia" ||
				p.Spec.Containers[0].SecurityContext == nil || !*p.Spec.Containers[0].SecurityContext.Privileged {
				t.Errorf("agent pod %s does not run hostPID, privileged, runtimeClassName nvidia as shipped", p.Name)
			}
		}
	}
	if webhooks != 3 || agents != 1 {
		t.Errorf("%d webhook replicas and %d agent pods, want 3 and 1", webhooks, agents)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// gpuPod is a 1-GPU pod whose init container and main container run the
// pause image: the init container waits until the test signals it.
func gpuPod(name, watts string) *corev1.Pod { return gpuPodIn("default", name, watts) }

func gpuPodIn(namespace, name, watts string) *corev1.Pod {
	p := testpod.MakePod(name, namespace).GPU(1).Limit(watts).Obj()
	p.Spec.Containers[0].Image = realnode.PauseImage
	p.Spec.InitContainers = []corev1.Container{{Name: "warmup", Image: realnode.PauseImage}}
	grace := int64(5)
	p.Spec.TerminationGracePeriodSeconds = &grace
	return p
}

func createPod(t *testing.T, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	created, err := cluster.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", p.Name, err)
	}
	return created
}

// deletePod deletes a pod and waits until it is gone. It runs in
// t.Cleanup too, where t.Context() has ended: it has its own deadline.
func deletePod(t *testing.T, p *corev1.Pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pods := cluster.Client.CoreV1().Pods(p.Namespace)
	if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	err := poll.Until(ctx, poll.Opts{Interval: 100 * time.Millisecond}, "pod gone", func(ctx context.Context) (bool, string, error) {
		_, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), fmt.Sprint(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not gone: %v", p.Namespace, p.Name, err)
	}
}

func getPod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	p, err := cluster.Client.CoreV1().Pods("default").Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// containerState returns the state of a pod's (init) container and its ID.
func containerState(p *corev1.Pod, name string) (corev1.ContainerState, string) {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if s.Name == name {
			_, id, _ := strings.Cut(s.ContainerID, "://")
			return s.State, id
		}
	}
	return corev1.ContainerState{}, ""
}

// containerPIDs reads a running container's host PIDs from its real cgroup.
func containerPIDs(t *testing.T, p *corev1.Pod, id string) []int {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids/kubepods", "*", "pod"+string(p.UID), id, "cgroup.procs"))
	more, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/pids/kubepods", "pod"+string(p.UID), id, "cgroup.procs"))
	var pids []int
	for _, m := range append(matches, more...) {
		data, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// gpuAt returns a GPU whose limit is watts (tests use limits no other pod
// has, so it is the GPU the kubelet gave their pod).
func gpuAt(t *testing.T, watts int) (string, bool) {
	t.Helper()
	for uuid, w := range limits(t) {
		if w == watts {
			return uuid, true
		}
	}
	return "", false
}

// TestGPUPodCappedBeforeInitContainerEnds: the agent caps a GPU pod's GPU
// from the kubelet's PodResources while the pod's init container still runs
// (before any workload could make its first CUDA call), and once the main
// container runs, its real host PID maps to the pod through its real cgroup.
func TestGPUPodCappedBeforeInitContainerEnds(t *testing.T) {
	install(t)
	pod := createPod(t, gpuPod("capped-early", "300"))
	t.Cleanup(func() { deletePod(t, pod) })
	if got := pod.Annotations[policy.AnnotationPowerLimitValidated]; got != "300" {
		t.Fatalf("the webhook stamped %q, want 300", got)
	}

	var initID string
	eventually(t, "the init container runs", func() (bool, string) {
		p := getPod(t, pod.Name)
		st, id := containerState(p, "warmup")
		initID = id
		return st.Running != nil, fmt.Sprintf("%+v", st)
	})
	eventually(t, "the GPU is capped at 300 W while the init container runs", func() (bool, string) {
		_, ok := gpuAt(t, 300)
		return ok, fmt.Sprint(limits(t))
	})
	p := getPod(t, pod.Name)
	if st, _ := containerState(p, "warmup"); st.Running == nil {
		t.Fatalf("the init container ended before the check: %+v", st)
	}
	uuid, _ := gpuAt(t, 300)

	// End the init container (it waits for SIGTERM), so the workload starts.
	for _, pid := range containerPIDs(t, p, initID) {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatalf("signal the init container (pid %d): %v", pid, err)
		}
	}
	var mainPID int
	eventually(t, "the main container runs and the driver lists its process on the GPU", func() (bool, string) {
		for _, g := range gpus(t) {
			if g.UUID == uuid && len(g.Processes) > 0 {
				mainPID = g.Processes[0].PID
				return true, ""
			}
		}
		return false, fmt.Sprintf("pod phase %s", getPod(t, pod.Name).Status.Phase)
	})
	uid, ok, err := podmap.PodOfPID(os.DirFS("/proc"), mainPID)
	if err != nil || !ok || uid != pod.UID {
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", mainPID))
		t.Fatalf("PID %d maps to pod %q (found %t, err %v), want %s; its cgroup:\n%s", mainPID, uid, ok, err, pod.UID, cg)
	}
	if w := limits(t)[uuid]; w != 300 {
		t.Errorf("GPU %s at %d W once the workload runs, want 300", uuid, w)
	}
}

// TestLimitPatchedDownAndUpThenRestoredOnDelete: an annotation patch is
// re-stamped by the webhook and enforced by the agent, both ways; deleting
// the pod restores the GPU to the limit it had before.
func TestLimitPatchedDownAndUpThenRestoredOnDelete(t *testing.T) {
	install(t)
	before := limits(t)
	pod := createPod(t, gpuPod("patched", "350"))
	t.Cleanup(func() { deletePod(t, pod) })
	var uuid string
	eventually(t, "capped at 350 W", func() (bool, string) {
		var ok bool
		uuid, ok = gpuAt(t, 350)
		return ok, fmt.Sprint(limits(t))
	})
	for _, w := range []string{"250", "450"} {
		kubectl(t, "", "annotate", "pod", "-n", "default", pod.Name, "--overwrite", policy.AnnotationPowerLimit+"="+w)
		if got := getPod(t, pod.Name).Annotations[policy.AnnotationPowerLimitValidated]; got != w {
			t.Fatalf("after the patch to %s W the stamp is %q", w, got)
		}
		want, _ := strconv.Atoi(w)
		eventually(t, "the GPU follows the patch to "+w+" W", func() (bool, string) {
			return limits(t)[uuid] == want, fmt.Sprint(limits(t))
		})
	}
	deletePod(t, pod)
	eventually(t, "the GPU restored after the pod is gone", func() (bool, string) {
		return limits(t)[uuid] == before[uuid], fmt.Sprintf("%d W, want %d W", limits(t)[uuid], before[uuid])
	})
}

// budgetedNamespace creates namespace ns and a GPUPowerBudget named budget
// of total watts that selects it (by the label
// power.dynamo.nvidia.com/budget=<budget>), both deleted when the test ends.
func budgetedNamespace(t *testing.T, ns, budget string, total int) {
	t.Helper()
	kubectl(t, "", "create", "namespace", ns)
	kubectl(t, "", "label", "namespace", ns, "power.dynamo.nvidia.com/budget="+budget)
	t.Cleanup(func() { _, _ = cluster.Kubectl(context.Background(), "", "delete", "namespace", ns, "--wait=false") })
	applyUntilCleanup(t, map[string]any{
		"apiVersion": "power.dynamo.nvidia.com/v1alpha1", "kind": "GPUPowerBudget",
		"metadata": map[string]any{"name": budget},
		"spec": map[string]any{
			"totalWatts":        total,
			"namespaceSelector": map[string]any{"matchLabels": map[string]any{"power.dynamo.nvidia.com/budget": budget}},
		},
	}, "gpupowerbudget", budget)
}

// TestBudget: a budget's committed watts follow a real pod; an over-budget
// pod is denied with the planner-facing message; deleting a pod releases
// its watts.
func TestBudget(t *testing.T) {
	install(t)
	ns := "budgeted"
	budgetedNamespace(t, ns, "realnode", 1000)
	committed := func() int {
		out := kubectl(t, "", "get", "gpupowerbudget", "realnode", "-o", "jsonpath={.status.committedWatts}")
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}

	a := createPod(t, gpuPodIn(ns, "budget-a", "600"))
	t.Cleanup(func() { deletePod(t, a) })
	eventually(t, "600 W committed", func() (bool, string) { return committed() == 600, fmt.Sprint(committed()) })

	_, err := cluster.Client.CoreV1().Pods(ns).Create(t.Context(), gpuPodIn(ns, "budget-b", "500"), metav1.CreateOptions{})
	want := `exceeded GPU power budget "realnode": requested 500 W`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("over-budget pod: got %v, want a denial containing %q", err, want)
	}
	t.Logf("denied as planned: %v", err)

	deletePod(t, a)
	eventually(t, "the budget released the deleted pod's watts", func() (bool, string) { return committed() == 0, fmt.Sprint(committed()) })
	b := createPod(t, gpuPodIn(ns, "budget-b", "500"))
	deletePod(t, b)
}

// TestAgentImageCarriesNoNVML: the agent image holds the binary and the C
// runtime it links, and never libnvidia-ml.
func TestAgentImageCarriesNoNVML(t *testing.T) {
	agentRef, _ := realnode.ShippedImage(testdeploy.AgentFile())
	files, err := realnode.ImageFiles(agentRef)
	if err != nil {
		t.Fatal(err)
	}
	var libc bool
	for _, f := range files {
		if strings.Contains(f, "nvidia-ml") {
			t.Errorf("the agent image bundles %s", f)
		}
		if strings.Contains(f, "libc.so") {
			libc = true
		}
	}
	if !libc {
		t.Errorf("the agent image lacks the C library its cgo binary needs: %v", files)
	}
}

// TestEnforcementLatency measures, for a few GPU pods one after another, the
// time from the pod's binding to the node (seen by a watch) to the cap being
// written to the GPU. The numbers are logged for docs/benchmarks.md; nothing
// is asserted about them (the machine is shared).
func TestEnforcementLatency(t *testing.T) {
	install(t)
	var latencies []time.Duration
	for i := range 5 {
		watts := 271 + i
		name := fmt.Sprintf("latency-%d", i)
		w, err := cluster.Client.CoreV1().Pods("default").Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		pod := createPod(t, gpuPod(name, strconv.Itoa(watts)))
		var bound time.Time
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				bound = time.Now()
				break
			}
		}
		w.Stop()
		// Looked at often: the time to the cap is what this measures.
		if err := poll.Until(t.Context(), poll.Opts{Interval: 5 * time.Millisecond, Timeout: 4 * time.Minute}, name+" capped", func(context.Context) (bool, string, error) {
			_, ok := gpuAt(t, watts)
			return ok, "", nil
		}); err != nil {
			t.Fatalf("pod %s bound but its GPU never capped: %v", name, limits(t))
		}
		latencies = append(latencies, time.Since(bound))
		deletePod(t, pod)
		eventually(t, "GPUs restored", func() (bool, string) {
			_, capped := gpuAt(t, watts)
			return !capped, fmt.Sprint(limits(t))
		})
	}
	slices.Sort(latencies)
	t.Logf("pod bound -> cap written, %d pods: min %s, median %s, max %s", len(latencies),
		latencies[0].Round(time.Millisecond), latencies[len(latencies)/2].Round(time.Millisecond), latencies[len(latencies)-1].Round(time.Millisecond))
}
