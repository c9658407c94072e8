package main

import (
	"context"
	"flag"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/test/framework/certmanager"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
	"github.com/dynamo-power/gpu-power/test/framework/realnode/gpusim"
)

// addons runs cert-manager's controllers and cainjector, the fake device
// plugin, the fake DRA driver (with --dra-gpus) and the fake NVML's process
// feeder until SIGTERM; realnode's WithdrawGPUsSignal and RestoreGPUsSignal
// withdraw the device plugin's GPUs and bring them back.
func addons(ctx context.Context, args []string, logf func(string, ...any)) error {
	fs := flag.NewFlagSet("addons", flag.ExitOnError)
	gpus := fs.Int("gpus", 2, "Simulated H100s the device plugin serves.")
	draGPUs := fs.Int("dra-gpus", 0, "Simulated H100s after those that the fake DRA driver publishes.")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// cert-manager's cainjector runs on controller-runtime, which logs
	// through klog like the rest of this process.
	ctrl.SetLogger(klog.NewKlogr())
	kubeconfig := filepath.Join(realnode.Dir, "pki", "addons.kubeconfig")
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var uuids []string
	for i := range *gpus {
		uuids = append(uuids, nvmlfake.UUID(i))
	}
	plugin := &gpusim.Plugin{UUIDs: uuids}
	go func() { _ = plugin.Serve(ctx, logf) }()
	// Room for a withdraw and the restore right after it, pending at once.
	withdraw := make(chan os.Signal, 2)
	signal.Notify(withdraw, realnode.WithdrawGPUsSignal, realnode.RestoreGPUsSignal)
	go func() {
		for s := range withdraw {
			plugin.Withdraw(s == realnode.WithdrawGPUsSignal)
			logf("Device plugin GPUs withdrawn: %t", s == realnode.WithdrawGPUsSignal)
		}
	}()
	if *draGPUs > 0 {
		dra := &gpusim.DRADriver{Client: client, NodeName: realnode.NodeName, GPUs: map[int]string{}, KubeletDir: realnode.KubeletDir,
			Product: nvmlfake.H100s(1)[0].Name}
		for i := *gpus; i < *gpus+*draGPUs; i++ {
			dra.GPUs[i] = nvmlfake.UUID(i)
		}
		go func() {
			if err := dra.Run(ctx, logf); err != nil {
				logf("DRA driver stopped: %v", err)
			}
		}()
	}
	go func() {
		f := &gpusim.Feeder{Client: client, NodeName: realnode.NodeName, NVMLFile: realnode.FakeNVMLFile, Period: 200 * time.Millisecond}
		if err := f.Run(ctx, logf); err != nil {
			logf("Feeder stopped: %v", err)
		}
	}()
	// cert-manager needs its CRDs, which `up` installs after this starts.
	// Its controllers run on ctx, not on the poll's.
	if poll.Until(ctx, poll.Opts{Interval: time.Second}, "cert-manager started", func(context.Context) (bool, string, error) {
		if err := certmanager.Start(ctx, kubeconfig, cfg); err != nil {
			logf("cert-manager not started yet: %v", err)
			return false, err.Error(), nil
		}
		return true, "", nil
	}) != nil {
		return nil // stopped before cert-manager could start
	}
	logf("cert-manager controllers and cainjector started")
	<-ctx.Done()
	return nil
}
