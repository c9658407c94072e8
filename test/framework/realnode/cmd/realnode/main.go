// Command realnode starts (`up`) and stops (`down`) a real one-node cluster
// on this machine for tests and demos, and prints the manifests for it
// (`webhook-manifests`, `agent-manifest`) and the Helm chart's values for it
// (`helm-values`); `addons` is the process it starts for cert-manager's
// controllers and the simulated GPUs. Run it as root.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/test/framework/realnode"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: realnode up|down|webhook-manifests|agent-manifest|helm-values|addons [flags]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "realnode: %v\n", err)
		os.Exit(1)
	}
}

func run(cmd string, args []string) error {
	logf := func(format string, args ...any) { fmt.Printf("realnode: "+format+"\n", args...) }
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch cmd {
	case "up":
		err = up(ctx, args, logf)
	case "down":
		err = realnode.Down(logf)
	case "addons":
		err = addons(ctx, args, logf)
	case "webhook-manifests":
		err = webhookManifests(args)
	case "agent-manifest":
		err = agentManifest(args)
	case "helm-values":
		err = helmValues()
	default:
		err = fmt.Errorf("unknown command %q (want up, down, webhook-manifests, agent-manifest, helm-values or addons)", cmd)
	}
	return err
}

func up(ctx context.Context, args []string, logf func(string, ...any)) error {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	root := fs.String("root", ".", "Repository root.")
	k8sBin := fs.String("k8s-bin", "", "Folder of the Kubernetes binaries, bin/k8s/<version> (hack/build-k8s.sh; make cluster-up passes it).")
	gpus := fs.Int("gpus", 2, "Simulated H100s the device plugin serves.")
	draGPUs := fs.Int("dra-gpus", 0, "Simulated H100s after those that a fake of NVIDIA's DRA driver publishes.")
	install := fs.Bool("install", false, "Also apply both manifests (deploy/webhook/, deploy/agent/daemonset.yaml) and wait until they are Ready.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *k8sBin == "" {
		return errors.New("--k8s-bin is required: the folder hack/build-k8s.sh built the Kubernetes binaries into (make cluster-up passes it)")
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		return err
	}
	absBin, err := filepath.Abs(*k8sBin)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	c, err := realnode.Up(ctx, realnode.Options{Root: absRoot, K8sBin: absBin, GPUs: *gpus, DRAGPUs: *draGPUs, Owner: "make cluster-up", Logf: logf})
	if err != nil || !*install {
		return err
	}
	logf("installing: deploy/webhook/ with the API server's client CA, then the agent DaemonSet")
	if err := c.Install(ctx, absRoot); err != nil {
		return err
	}
	logf("installed; try: KUBECONFIG=%s kubectl get pods -A", realnode.Kubeconfig)
	return nil
}

// webhookManifests prints deploy/webhook/ with the API server's client CA
// of the running cluster (docs/cluster.md).
func webhookManifests(args []string) error {
	fs := flag.NewFlagSet("webhook-manifests", flag.ExitOnError)
	dir := fs.String("d", "deploy/webhook", "The shipped webhook manifests.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ca, err := os.ReadFile(realnode.APIServerAuth().CA)
	if err != nil {
		return fmt.Errorf("the cluster's webhook client CA (is it up?): %w", err)
	}
	out, err := realnode.WebhookManifests(*dir, ca)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

// agentManifest prints the shipped agent DaemonSet with the one change a
// node with simulated GPUs needs (docs/cluster.md).
func agentManifest(args []string) error {
	fs := flag.NewFlagSet("agent-manifest", flag.ExitOnError)
	file := fs.String("f", "deploy/agent/daemonset.yaml", "The shipped agent manifest.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	out, err := realnode.AgentManifest(*file)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}

// helmValues prints the chart values that make the real node's changes
// (the API server's client CA of the running cluster, --fake-nvml), for
// `helm install -f -` (docs/cluster.md).
func helmValues() error {
	ca, err := os.ReadFile(realnode.APIServerAuth().CA)
	if err != nil {
		return fmt.Errorf("the cluster's webhook client CA (is it up?): %w", err)
	}
	out, err := realnode.HelmValues(ca)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(out)
	return err
}
