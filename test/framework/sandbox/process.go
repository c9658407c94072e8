package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// Binaries builds power-webhook and power-agent into dir the way `make build`
// does (the webhook without cgo), so the sandbox runs what ships.
func Binaries(ctx context.Context, dir string) error {
	for _, b := range []struct {
		name string
		env  []string
	}{
		{"webhook", []string{"CGO_ENABLED=0"}},
		{"agent", []string{"CGO_CFLAGS=-Wno-deprecated-declarations"}},
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(dir, "power-"+b.name), "./cmd/"+b.name)
		cmd.Dir = envtestenv.Root()
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build power-%s: %w\n%s", b.name, err, out)
		}
	}
	return nil
}

// Process is one of the project's binaries running beside the API server,
// as its pod would run it: it can be stopped (SIGTERM, as the kubelet does),
// killed and started again with the same flags and addresses.
type Process struct {
	Name string
	// Log is the file that collects its output across restarts.
	Log string
	// ProbeAddr serves /healthz and /readyz; MetricsAddr serves /metrics.
	ProbeAddr, MetricsAddr string

	bin  string
	args []string
	env  []string
	cmd  *exec.Cmd
	done chan struct{}
}

func newProcess(name, binDir, logDir string, env []string, args ...string) (*Process, error) {
	probe, err := envtestenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	metrics, err := envtestenv.FreeAddr()
	if err != nil {
		return nil, err
	}
	return &Process{
		Name: "power-" + name, Log: filepath.Join(logDir, "power-"+name+".log"),
		ProbeAddr: probe, MetricsAddr: metrics,
		bin:  filepath.Join(binDir, "power-"+name),
		args: append(args, "--health-probe-bind-address", probe, "--metrics-bind-address", metrics),
		env:  env,
	}, nil
}

// Start runs the binary and returns once its readiness probe passes.
func (p *Process) Start(ctx context.Context) error {
	if p.Running() {
		return fmt.Errorf("%s is already running", p.Name)
	}
	log, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = log.Close()
		close(p.done)
	}()
	err = poll.Until(ctx, poll.Opts{Timeout: 2 * time.Minute}, p.Name+" ready", func(context.Context) (bool, string, error) {
		if !p.Running() {
			return false, "", fmt.Errorf("%s exited: %s", p.Name, p.cmd.ProcessState)
		}
		ok, why := envtestenv.Ready(p.ProbeAddr)
		return ok, why, nil
	})
	if err != nil {
		return fmt.Errorf("%w; its log ends:\n%s", err, p.LogTail(30))
	}
	return nil
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Pid is the process id while it runs, 0 when it does not.
func (p *Process) Pid() int {
	if !p.Running() {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stop sends SIGTERM and waits for the process to exit, as the kubelet ends a
// pod; after grace it kills it and reports that.
func (p *Process) Stop(grace time.Duration) error {
	return p.signal(syscall.SIGTERM, grace)
}

// Kill ends the process at once, like a node failure or an OOM kill.
func (p *Process) Kill() error { return p.signal(syscall.SIGKILL, 10*time.Second) }

func (p *Process) signal(sig syscall.Signal, grace time.Duration) error {
	if !p.Running() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of %s", p.Name, grace, sig)
	}
}

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string {
	data, err := os.ReadFile(p.Log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
