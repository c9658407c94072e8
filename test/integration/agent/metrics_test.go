package agent_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap/podresourcestest"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// series scrapes the agent and returns the samples of a metric by their
// label text ("" for a metric without labels).
func (n *node) series(name string) map[string]float64 {
	n.t.Helper()
	out := map[string]float64{}
	resp, err := http.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		return out
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(body)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		i := strings.LastIndexByte(rest, ' ')
		v, err := strconv.ParseFloat(rest[i+1:], 64)
		if err == nil {
			out[strings.TrimSpace(rest[:i])] = v
		}
	}
	return out
}

// TestAgentExportsTheSeriesTheAlertsRead runs the agent binary on the fake
// NVML's state file, as the sandbox and the Prometheus alert tests do, and
// drives each new series from outside: pods come and go, the state file's
// powerCappedNanoseconds grows.
func TestAgentExportsTheSeriesTheAlertsRead(t *testing.T) {
	n := newNode(t)
	gpu0, gpu1, gpu2 := nvmlfake.UUID(0), nvmlfake.UUID(1), nvmlfake.UUID(2)
	capped := testpod.MakePod("info-capped", "llm").GPU(1).NodeName(nodeName).Limit("250").Stamp("250").Obj()
	unstamped := testpod.MakePod("info-unstamped", "llm").GPU(1).NodeName(nodeName).Limit("300").Obj()
	n.kubelet.SetPods(
		podresourcestest.Pod("llm", capped.Name, podresourcestest.Container("worker", podresourcestest.Devices(policy.ResourceGPU, gpu0))),
		podresourcestest.Pod("llm", unstamped.Name, podresourcestest.Container("worker", podresourcestest.Devices(policy.ResourceGPU, gpu1))))
	for _, p := range []client.Object{capped, unstamped} {
		if err := k8s.Create(t.Context(), p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), p, client.GracePeriodSeconds(0)) })
	}
	started := float64(time.Now().Unix())
	n.start("500ms")
	n.limitBecomes(0, 250)

	info := func(gpu, pod string) string { return fmt.Sprintf(`{gpu=%q,namespace="llm",pod=%q}`, gpu, pod) }
	n.eventually("an info series for each pod holding a GPU, one unvalidated pod", func() (bool, string) {
		s := n.series("dynamo_power_agent_gpu_pod_info")
		u := n.series("dynamo_power_agent_unvalidated_limit_pods")[""]
		return len(s) == 2 && s[info(gpu0, capped.Name)] == 1 && s[info(gpu1, unstamped.Name)] == 1 && u == 1,
			fmt.Sprintf("info %v, unvalidated %v", s, u)
	})
	if got := n.series("dynamo_power_agent_reconcile_interval_seconds")[""]; got != 0.5 {
		t.Errorf("dynamo_power_agent_reconcile_interval_seconds = %v, want 0.5", got)
	}
	n.eventually("a recent successful cycle", func() (bool, string) {
		got := n.series("dynamo_power_agent_last_successful_reconcile_timestamp_seconds")[""]
		return got >= started && got <= float64(time.Now().Unix()+1), fmt.Sprint(got)
	})

	// The cap binds: the driver's counter (the state file's) grows.
	world, err := nvmlfake.NewFromFile(n.nvml)
	if err != nil {
		t.Fatal(err)
	}
	if err := world.AddPowerCapped(gpu0, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := world.Update(gpu2, func(g *nvmlfake.GPU) { g.PowerCappedUnsupported = true }); err != nil {
		t.Fatal(err)
	}
	n.eventually("capped seconds follow NVML; none for a GPU where it is not supported", func() (bool, string) {
		s := n.series("dynamo_power_agent_gpu_power_capped_seconds_total")
		_, unsupported := s[fmt.Sprintf("{gpu=%q}", gpu2)]
		return s[fmt.Sprintf("{gpu=%q}", gpu0)] == 3 && len(s) == 7 && !unsupported, fmt.Sprint(s)
	})

	// The unstamped pod goes: its series goes, and the count with it.
	n.kubelet.SetPods(
		podresourcestest.Pod("llm", capped.Name, podresourcestest.Container("worker", podresourcestest.Devices(policy.ResourceGPU, gpu0))))
	if err := k8s.Delete(t.Context(), unstamped, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	n.eventually("the gone pod's info series deleted", func() (bool, string) {
		s := n.series("dynamo_power_agent_gpu_pod_info")
		u := n.series("dynamo_power_agent_unvalidated_limit_pods")[""]
		return len(s) == 1 && s[info(gpu0, capped.Name)] == 1 && u == 0, fmt.Sprintf("info %v, unvalidated %v", s, u)
	})
}
