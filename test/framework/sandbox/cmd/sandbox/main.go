// Command sandbox runs the whole system on this machine with no cluster and
// no GPU (see package sandbox).
//
//	sandbox demo   plays the planner scenario with a narrative; exit 0 only if every step behaved
//	sandbox up     starts the sandbox and keeps it running until interrupted
//
// `make demo` and `make up` build what it needs and run it.
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

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
)

func main() {
	fs := flag.NewFlagSet("sandbox", flag.ExitOnError)
	binDir := fs.String("bin-dir", "", "Folder with power-webhook and power-agent already built (`make build`); empty builds them.")
	dir := fs.String("dir", "", "Folder for the sandbox's files (kubeconfig, GPU state, logs); empty makes a temporary one.")
	fs.Usage = func() {
		_, _ = fmt.Fprintf(fs.Output(), "usage: sandbox [flags] demo|up\n\n"+
			"  demo  play the planner scenario with a narrative; exit 0 only if every step behaved\n"+
			"  up    start the sandbox and keep it running until interrupted\n\nflags:\n")
		fs.PrintDefaults()
	}
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() != 1 || (fs.Arg(0) != "demo" && fs.Arg(0) != "up") {
		fs.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, fs.Arg(0), *binDir, *dir)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\n%s FAILED: %v\n", fs.Arg(0), err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mode, binDir, dir string) (err error) {
	if dir == "" {
		if dir, err = os.MkdirTemp("", "power-"+mode+"-"); err != nil {
			return err
		}
		// A temporary folder goes after a clean run; after a failure its logs
		// are what the user reads next.
		defer func() {
			if err == nil {
				err = os.RemoveAll(dir)
			} else {
				fmt.Fprintf(os.Stderr, "Logs kept in %s\n", dir)
			}
		}()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if binDir != "" {
		if binDir, err = filepath.Abs(binDir); err != nil {
			return err
		}
	}
	fmt.Printf("Sandbox files (kubeconfig, simulated GPU state, logs): %s\n", dir)
	s, err := sandbox.Start(ctx, sandbox.Options{Dir: dir, BinDir: binDir, Progress: os.Stdout})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n==> Stopping the sandbox")
		err = errors.Join(err, s.Stop())
		if err == nil {
			fmt.Println("Stopped cleanly.")
		}
	}()
	if mode == "up" {
		return up(ctx, s)
	}
	planner := &sandbox.Planner{S: s, Out: os.Stdout}
	if err := planner.Play(ctx); err != nil {
		fmt.Printf("\npower-webhook log (last lines):\n%s\n\npower-agent log (last lines):\n%s\n", s.Webhook.LogTail(20), s.Agent.LogTail(20))
		return err
	}
	fmt.Println("\nDemo passed: every step behaved as documented.")
	return nil
}

func up(ctx context.Context, s *sandbox.Sandbox) error {
	kubectl, err := envtestenv.Kubectl()
	if err != nil {
		return err
	}
	fmt.Printf(`
The sandbox is up: a real API server with cert-manager, both manifest folders
applied, power-webhook at %s and power-agent on node %s with %d simulated
%s GPUs. Pods bound to %s get GPUs from a simulated kubelet. The webhook
takes only the API server's client certificate (curl --cert %s --key %s).

  export KUBECONFIG=%s
  alias kubectl=%s      # or your own
  kubectl get gpupowerbudgets,pods -A
  %s/power-agent inspect --node-name %s --fake-nvml %s \
      --state-dir %s --pod-resources-socket %s --stamp-key-file %s
  tail -f %s %s

Ctrl-C stops everything.
`, s.WebhookURL, sandbox.NodeName, sandbox.GPUCount, sandbox.GPUProduct, sandbox.NodeName, s.APIServerAuth.Cert, s.APIServerAuth.Key,
		s.Kubeconfig, kubectl, s.BinDir, sandbox.NodeName, s.NVMLState, s.AgentStateDir, s.PodResourcesSocket, s.StampKeyFile(),
		s.Webhook.Log, s.Agent.Log)
	<-ctx.Done()
	return s.Err()
}
