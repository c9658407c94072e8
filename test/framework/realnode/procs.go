package realnode

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// Proc is a process the harness started, named so that teardown can tell it
// from a later process that reused its PID.
type Proc struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // field 22 of /proc/<pid>/stat
	// Bin and Args start it again.
	Bin  string   `json:"bin"`
	Args []string `json:"args"`
}

// start runs bin detached (own session, so a make or test that ends does not
// take the cluster with it) with its output in logDir/name.log.
func start(logDir, name, bin string, args []string, env []string) (Proc, error) {
	logFile, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return Proc{}, fmt.Errorf("log of %s: %w", name, err)
	}
	defer func() { _ = logFile.Close() }() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	// Reap it if it exits while this process still runs; after this process
	// exits, init does.
	go func() { _ = cmd.Wait() }()
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	return Proc{Name: name, PID: cmd.Process.Pid, StartTime: st, Bin: bin, Args: args}, nil
}

// startTime reads the start time of pid in clock ticks since boot.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// are counted after its closing parenthesis.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	// f[0] is field 3 (state); field 22 is f[19].
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Alive reports whether p still runs (same PID, same start time).
func (p Proc) Alive() bool {
	st, err := startTime(p.PID)
	return err == nil && st == p.StartTime
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs.
func (p Proc) Stop(grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.PID, err)
	}
	// Teardown runs after a test's context ended too: the grace bounds it.
	exited := func(context.Context) (bool, string, error) { return !p.Alive(), "", nil }
	every := poll.Opts{Interval: 100 * time.Millisecond, Timeout: grace}
	if poll.Until(context.Background(), every, p.Name+" exited", exited) == nil {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	every.Timeout = 10 * time.Second
	if poll.Until(context.Background(), every, p.Name+" killed", exited) == nil {
		return nil
	}
	return fmt.Errorf("stop %s (pid %d): still running after SIGKILL", p.Name, p.PID)
}
