package realnode

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// HostState is what a real node changes on the machine outside its own
// directory, recorded before the cluster starts so teardown can put it back.
type HostState struct {
	// Sysctls the kubelet sets (setupKernelTunables).
	Sysctls map[string]string `json:"sysctls"`
	// Existed says, for each path the node creates, whether it was there.
	Existed map[string]bool `json:"existed"`
	// Mounts are the mount points.
	Mounts []string `json:"mounts"`
	// Cgroups are the kubepods cgroups that were there, one per hierarchy.
	Cgroups []string `json:"cgroups"`
	// Links are the network interfaces.
	Links []string `json:"links"`
	// Entries are the names in the system folders a node writes into.
	Entries map[string][]string `json:"entries"`
	// FirstUse is the kind of file at each first-use artefact's path
	// (firstuse.go): what may appear in Entries and stay.
	FirstUse map[string]string `json:"firstUse"`
}

var (
	kubeletSysctls = []string{
		"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
		"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes", "net.ipv4.ip_forward",
	}
	// nodePaths are created by kubelet, containerd, CNI and the agent.
	nodePaths = []string{
		Dir, KubeletDir, "/var/log/pods", "/var/log/containers", "/var/lib/cni",
		"/run/containerd", "/run/netns", "/var/lib/power-agent", "/var/lib/containerd", "/opt/containerd",
	}
	// mountPrefixes are where a node mounts (pod volumes, netns, rootfs).
	mountPrefixes = []string{Dir, KubeletDir, "/run/containerd", "/run/netns", "/var/lib/containerd"}
	// systemDirs are listed before and after to catch anything else left.
	systemDirs = []string{"/var/lib", "/var/log", "/run", "/etc", "/opt"}
	cgroupRoot = "/sys/fs/cgroup"
	// controlPlaneCgroup holds the harness's own processes (etcd, the API
	// server, controllers, containerd, kubelet, addons) as one group in the
	// CPU hierarchy. In the root group every thread of theirs would weigh as
	// much as the whole kubepods group, and a busy API server would starve
	// the pods whose probes have a 1 s timeout.
	controlPlaneCgroup = cgroupRoot + "/cpu/gpu-power-realnode"
)

// SnapshotHost records the host state a node changes.
func SnapshotHost() (HostState, error) {
	s := HostState{Sysctls: map[string]string{}, Existed: map[string]bool{}, Entries: map[string][]string{}, FirstUse: firstUseKinds()}
	for _, k := range kubeletSysctls {
		v, err := os.ReadFile(sysctlPath(k))
		if err != nil {
			continue // not every kernel has every key
		}
		s.Sysctls[k] = strings.TrimSpace(string(v))
	}
	for _, p := range append(slices.Clone(nodePaths), controlPlaneCgroup) {
		_, err := os.Lstat(p)
		s.Existed[p] = err == nil
	}
	var err error
	if s.Mounts, err = mountPoints(); err != nil {
		return s, err
	}
	s.Cgroups = kubepodsCgroups()
	links, err := os.ReadDir("/sys/class/net")
	if err != nil {
		return s, err
	}
	for _, l := range links {
		s.Links = append(s.Links, l.Name())
	}
	for _, d := range systemDirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			return s, err
		}
		for _, e := range entries {
			s.Entries[d] = append(s.Entries[d], e.Name())
		}
	}
	return s, nil
}

// Diff lists what differs from before, in words; empty when the host is back.
// A first-use artefact that appeared is no difference (firstuse.go).
func (before HostState) Diff(after HostState) []string {
	var d []string
	for _, k := range slices.Sorted(maps.Keys(before.Sysctls)) {
		if after.Sysctls[k] != before.Sysctls[k] {
			d = append(d, fmt.Sprintf("sysctl %s: %s before, %s after", k, before.Sysctls[k], after.Sysctls[k]))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(before.Existed)) {
		if after.Existed[p] != before.Existed[p] {
			d = append(d, fmt.Sprintf("%s: existed %t before, %t after", p, before.Existed[p], after.Existed[p]))
		}
	}
	d = append(d, setDiff("mount", before.Mounts, after.Mounts)...)
	d = append(d, setDiff("cgroup", before.Cgroups, after.Cgroups)...)
	d = append(d, setDiff("network interface", before.Links, after.Links)...)
	for _, dir := range slices.Sorted(maps.Keys(before.Entries)) {
		entries := slices.DeleteFunc(slices.Clone(after.Entries[dir]), func(name string) bool {
			return !slices.Contains(before.Entries[dir], name) && keptFirstUse(dir, name, after.FirstUse)
		})
		d = append(d, setDiff("entry of "+dir, before.Entries[dir], entries)...)
	}
	return d
}

// KeptFirstUse lists the first-use artefacts that appeared since before,
// with the tool that made each, for the log.
func (before HostState) KeptFirstUse(after HostState) []string {
	var kept []string
	for _, a := range firstUseArtefacts {
		dir, name := filepath.Split(a.Path)
		dir = filepath.Clean(dir)
		if !slices.Contains(before.Entries[dir], name) && slices.Contains(after.Entries[dir], name) && keptFirstUse(dir, name, after.FirstUse) {
			kept = append(kept, a.Path+" ("+a.Why+")")
		}
	}
	return kept
}

func setDiff(what string, before, after []string) []string {
	var d []string
	for _, x := range after {
		if !slices.Contains(before, x) {
			d = append(d, fmt.Sprintf("%s %s: added", what, x))
		}
	}
	for _, x := range before {
		if !slices.Contains(after, x) {
			d = append(d, fmt.Sprintf("%s %s: removed", what, x))
		}
	}
	return d
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

// mountPoints reads the mount points of this mount namespace.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// kubepodsCgroups lists <hierarchy>/kubepods for every hierarchy that has it.
func kubepodsCgroups() []string {
	hierarchies, _ := os.ReadDir(cgroupRoot)
	var out []string
	for _, h := range hierarchies {
		p := filepath.Join(cgroupRoot, h.Name(), "kubepods")
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			out = append(out, p)
		}
	}
	return out
}

// restoreHost puts back what the node changed, given the state before it.
// It goes on past errors and returns them all.
func restoreHost(before HostState, logf func(string, ...any)) error {
	var errs []error
	// Container processes outlive the kubelet and containerd: kill what is
	// left in the kubepods cgroups this node made.
	for _, cg := range kubepodsCgroups() {
		if slices.Contains(before.Cgroups, cg) {
			continue
		}
		killCgroupTree(cg)
	}
	// Mounts: deepest first, detached, only under the node's own places.
	after, err := mountPoints()
	if err != nil {
		errs = append(errs, err)
	}
	var added []string
	for _, m := range after {
		if slices.Contains(before.Mounts, m) || !underAny(m, mountPrefixes) {
			continue
		}
		added = append(added, m)
	}
	sort.Slice(added, func(i, j int) bool { return len(added[i]) > len(added[j]) })
	for _, m := range added {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(added) > 0 {
		logf("unmounted %d mounts", len(added))
	}
	// cgroups: a cgroup can be removed once its processes are gone.
	for _, cg := range kubepodsCgroups() {
		if slices.Contains(before.Cgroups, cg) {
			continue
		}
		if err := removeCgroupTree(cg); err != nil {
			errs = append(errs, err)
		}
	}
	if !before.Existed[controlPlaneCgroup] {
		if err := removeCgroupTree(controlPlaneCgroup); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(before.Sysctls)) {
		cur, err := os.ReadFile(sysctlPath(k))
		if err == nil && strings.TrimSpace(string(cur)) == before.Sysctls[k] {
			continue
		}
		if err := os.WriteFile(sysctlPath(k), []byte(before.Sysctls[k]), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restore sysctl %s=%s: %w", k, before.Sysctls[k], err))
		} else {
			logf("restored sysctl %s=%s", k, before.Sysctls[k])
		}
	}
	// Interfaces this node made (the bridge; veths go with their netns).
	links, _ := os.ReadDir("/sys/class/net")
	for _, l := range links {
		if slices.Contains(before.Links, l.Name()) || (l.Name() != Bridge && !strings.HasPrefix(l.Name(), "veth")) {
			continue
		}
		if err := run("ip", "link", "delete", l.Name()); err != nil && l.Name() == Bridge {
			errs = append(errs, err)
		}
	}
	for _, p := range nodePaths {
		if before.Existed[p] {
			continue
		}
		if err := os.RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func underAny(p string, prefixes []string) bool {
	for _, pre := range prefixes {
		if p == pre || strings.HasPrefix(p, pre+"/") {
			return true
		}
	}
	return false
}

func killCgroupTree(root string) {
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
}

// removeCgroupTree removes a cgroup and its children, deepest first,
// retrying while killed processes are still exiting.
func removeCgroupTree(root string) error {
	var last error
	// Teardown runs after a test's context ended too: the timeout bounds it.
	if poll.Until(context.Background(), poll.Opts{Interval: 100 * time.Millisecond, Timeout: 5 * time.Second}, "cgroup "+root+" removed", func(context.Context) (bool, string, error) {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		last = nil
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, syscall.ENOENT) {
				last = fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
			}
		}
		if last == nil {
			return true, "", nil
		}
		killCgroupTree(root)
		return false, last.Error(), nil
	}) == nil {
		return nil
	}
	return last
}

// joinControlPlaneCgroup moves pid into controlPlaneCgroup, creating it;
// best effort: a host without a cgroup v1 cpu hierarchy runs it where it is.
func joinControlPlaneCgroup(pid int) {
	if _, err := os.Stat(filepath.Dir(controlPlaneCgroup) + "/cpu.shares"); err != nil {
		return
	}
	if err := os.Mkdir(controlPlaneCgroup, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return
	}
	_ = os.WriteFile(controlPlaneCgroup+"/cgroup.procs", []byte(strconv.Itoa(pid)), 0o644)
}
