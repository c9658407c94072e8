// Package cluster_test installs both manifests with kubectl onto a real node
// (test/framework/realnode: real kubelet, containerd, controllers and scheduler, only
// the GPUs simulated) and checks what an operator would: the pods become
// Ready through their own probes, GPU pods are capped before their workload
// starts, limits follow patches, deletion restores, the budget denies, and
// teardown leaves the machine as it was. It needs root.
package e2enode_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
)

var cluster *realnode.Cluster

func TestMain(m *testing.M) { envtestenv.Main(m, "cluster", setup) }

func logf(format string, args ...any) { fmt.Printf("realnode: "+format+"\n", args...) }

func setup(m *testing.M) (int, error) {
	if os.Geteuid() != 0 {
		return 0, fmt.Errorf("a real node needs root (kubelet, containerd, mounts, cgroups)")
	}
	assets, err := envtestenv.AssetsDir()
	if err != nil {
		return 0, err
	}
	if os.Getenv("REALNODE_ATTACH") != "" {
		// Against the cluster `make cluster-up` started; it stays up.
		if cluster, err = realnode.Attach(assets); err != nil {
			return 0, err
		}
		return m.Run(), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// As a machine that never ran the node's tools: what they create once
	// goes before the host is recorded, and must be accepted after teardown.
	fresh := os.Getenv("REALNODE_FRESH_HOST") == "1"
	c, err := realnode.Up(ctx, realnode.Options{Root: envtestenv.Root(), K8sBin: assets, GPUs: 2, DRAGPUs: 2, Owner: "test", Logf: logf, ForgetFirstUse: fresh})
	if err != nil {
		return 0, err
	}
	cluster = c
	code := m.Run()
	if code != 0 {
		keepLogs()
	}

	// Teardown must put the machine back: compared here, after every test.
	if err := realnode.Down(logf); err != nil {
		return 0, fmt.Errorf("teardown: %w", err)
	}
	after, err := realnode.SnapshotHost()
	if err != nil {
		return 0, err
	}
	if diff := c.State.Before.Diff(after); len(diff) > 0 {
		fmt.Printf("--- FAIL: teardown left the host changed:\n  %s\n", strings.Join(diff, "\n  "))
		return 1, nil
	}
	for _, k := range c.State.Before.KeptFirstUse(after) {
		logf("kept a first-use artefact: %s", k)
	}
	fmt.Println("--- PASS: teardown restored the host (processes, mounts, kubepods cgroups, sysctls, interfaces, state folders)")
	return code, nil
}

func kubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := cluster.Kubectl(t.Context(), stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	poll.Eventually(t, 4*time.Minute, what, cond)
}

var (
	installMu  sync.Mutex
	installed  bool
	installErr error
)

// install applies both manifests once for every test that needs them, and
// waits until the webhook replicas and the agent pod are Ready. A failed
// install fails every later test at once, without trying again.
func install(t *testing.T) {
	t.Helper()
	installMu.Lock()
	defer installMu.Unlock()
	if !installed && installErr == nil {
		installErr = doInstall(t)
		installed = installErr == nil
	}
	if installErr != nil {
		t.Fatalf("install: %v", installErr)
	}
}

// uninstalled records that the kubectl install is gone (the Helm test
// removes it): a test that runs after it and calls install applies it again.
func uninstalled() {
	installMu.Lock()
	defer installMu.Unlock()
	installed = false
}

func doInstall(t *testing.T) error { return cluster.Install(t.Context(), envtestenv.Root()) }

// gpus reads the simulated GPUs' state.
func gpus(t *testing.T) []nvmlfake.GPU {
	t.Helper()
	f, err := nvmlfake.NewFromFile(realnode.FakeNVMLFile)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.State()
	if err != nil {
		t.Fatal(err)
	}
	return st.Devices
}

// limits returns each GPU's current limit in watts, by UUID.
func limits(t *testing.T) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, g := range gpus(t) {
		out[g.UUID] = int(g.Limit.WattsDown())
	}
	return out
}

// keepLogs copies the cluster's logs out of its folder, which teardown
// removes, so a failed run can be read.
func keepLogs() {
	dir, err := os.MkdirTemp("", "gpu-power-realnode-logs-")
	if err != nil {
		return
	}
	// The pods' logs too: their folder goes with teardown.
	_ = exec.Command("cp", "-r", "/var/log/pods", filepath.Join(realnode.Dir, "logs", "pods")).Run()
	if err := exec.Command("cp", "-r", filepath.Join(realnode.Dir, "logs"), dir).Run(); err == nil {
		fmt.Printf("realnode: the cluster's logs are kept in %s/logs\n", dir)
	}
}
