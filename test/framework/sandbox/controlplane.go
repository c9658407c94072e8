package sandbox

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// APIServerPid is the process id of the sandbox's kube-apiserver: the child
// of this process that envtest started with the sandbox's --secure-port.
func (s *Sandbox) APIServerPid() (int, error) {
	if s.Config == nil {
		return 0, fmt.Errorf("no API server started")
	}
	u, err := url.Parse(s.Config.Host)
	if err != nil {
		return 0, fmt.Errorf("API server address %q: %w", s.Config.Host, err)
	}
	return childPid("kube-apiserver", "--secure-port="+u.Port())
}

// EtcdPid is the process id of the sandbox's etcd: the child of this process
// that envtest started with the sandbox's --listen-client-urls.
func (s *Sandbox) EtcdPid() (int, error) {
	if s.env == nil || s.env.ControlPlane.Etcd == nil || s.env.ControlPlane.Etcd.URL == nil {
		return 0, fmt.Errorf("no etcd started")
	}
	return childPid("etcd", "--listen-client-urls="+s.env.ControlPlane.Etcd.URL.String())
}

// childPid finds the one child of this process running the binary named
// binary with the argument arg. envtest keeps its processes' handles to
// itself; /proc names them. Matching the parent keeps other sandboxes'
// API servers on the same machine out.
func childPid(binary, arg string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	self := os.Getpid()
	var found []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := parentPid(pid); err != nil || ppid != self {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(cmdline, "\x00")), "\x00")
		if filepath.Base(argv[0]) == binary && slices.Contains(argv[1:], arg) {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("%d children of process %d run %s with %s: %v", len(found), self, binary, arg, found)
	}
	return found[0], nil
}

// parentPid reads the parent's id from /proc/<pid>/stat, after the command
// name (which may hold spaces and parentheses).
func parentPid(pid int) (int, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	return strconv.Atoi(f[1])
}
