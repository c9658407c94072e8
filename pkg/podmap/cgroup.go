package podmap

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/types"
)

const (
	// maxCgroupFile bounds what is read of /proc/<pid>/cgroup. A cgroup v1 host
	// with every controller mounted writes well under 4 KiB; more is not a file
	// the kernel wrote for a pod.
	maxCgroupFile = 64 << 10
	// maxPID is the kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit).
	maxPID = 1 << 22
)

// PodOfPID reads /proc/<pid>/cgroup from proc, the host's procfs root
// (os.DirFS("/proc") with hostPID), and returns the UID of the pod the process
// runs in, by the rules of PodUIDFromCgroup. A process that exited before or
// while its file was read yields an error that matches fs.ErrNotExist, so the
// caller can tell "gone" from a failure.
func PodOfPID(proc fs.FS, pid int) (types.UID, bool, error) {
	if pid <= 0 || pid > maxPID {
		return "", false, fmt.Errorf("pid %d out of range 1..%d", pid, maxPID)
	}
	name := strconv.Itoa(pid) + "/cgroup"
	f, err := proc.Open(name)
	if err != nil {
		return "", false, fmt.Errorf("open cgroup of pid %d: %w", pid, err)
	}
	defer func() { _ = f.Close() }() // opened read-only: a failed close loses nothing
	content, err := io.ReadAll(io.LimitReader(f, maxCgroupFile+1))
	if err != nil {
		// The kernel answers ESRCH when the task exits between open and read.
		if errors.Is(err, syscall.ESRCH) {
			err = fmt.Errorf("%w: %w", fs.ErrNotExist, err)
		}
		return "", false, fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	if len(content) > maxCgroupFile {
		return "", false, fmt.Errorf("cgroup of pid %d: longer than %d bytes", pid, maxCgroupFile)
	}
	uid, ok := PodUIDFromCgroup(content)
	return uid, ok, nil
}

// PodUIDFromCgroup returns the UID of the pod that the content of a
// /proc/<pid>/cgroup file places the process in, and false when it places it
// in no pod or cannot be trusted to.
//
// Each line is hierarchy-ID:controllers:path, split on the first two colons
// only, so a path may contain ':'. This covers cgroup v1 (a line per
// hierarchy), v2 (the single line 0::path) and hybrid hosts (both). Lines that
// name no pod (a v1 hierarchy the process sits at the root of, an empty
// unified hierarchy) are ignored; lines that name different pods make the
// whole file ambiguous, and it maps to no pod.
//
// Within a path, the first segment that names a pod wins:
//   - cgroupfs driver: "pod<uid>" (/kubepods/burstable/pod<uid>/<cid>;
//     Guaranteed pods have no QoS segment);
//   - systemd driver: "<parent>-pod<uid>.slice" with the UID's '-' written as
//     '_' (kubepods-besteffort-pod<uid>.slice);
//   - systemd driver under cgroup v1 with containerd, in hierarchies systemd
//     does not manage: "<pod slice>:<prefix>:<container id>", the cgroupsPath
//     kubelet hands the runtime, as a single segment
//     (kubepods-burstable-pod<uid>.slice:cri-containerd:<64 hex>).
//
// Segments before it are not checked, so nested kubelet roots
// (/kubelet.slice/kubelet-kubepods.slice/..., /prefix/kubepods/...) and paths
// relative to the reader's cgroup namespace (/../../pod<uid>/<cid>, what an
// agent in its own cgroup namespace reads for a pod beside it) match too. A
// process in the reader's own pod reads as /<cid> or /, which names no pod:
// the agent holds no GPU. The first segment wins because kubelet creates it,
// while a container with a writable cgroup can create any name below it.
//
// The UID must be lowercase 8-4-4-4-12 hex; anything else is no pod.
func PodUIDFromCgroup(content []byte) (types.UID, bool) {
	var found types.UID
	for line := range strings.SplitSeq(string(content), "\n") {
		path, ok := cgroupPath(line)
		if !ok {
			continue
		}
		uid, ok := podUIDFromPath(path)
		if !ok {
			continue
		}
		if found != "" && found != uid {
			return "", false
		}
		found = uid
	}
	return found, found != ""
}

// cgroupPath returns the path of a hierarchy-ID:controllers:path line, and
// false for anything the kernel does not write.
func cgroupPath(line string) (string, bool) {
	id, rest, ok := strings.Cut(line, ":")
	if !ok || id == "" || strings.Trim(id, "0123456789") != "" {
		return "", false
	}
	_, path, ok := strings.Cut(rest, ":")
	if !ok || !strings.HasPrefix(path, "/") {
		return "", false
	}
	return path, true
}

func podUIDFromPath(path string) (types.UID, bool) {
	for seg := range strings.SplitSeq(path, "/") {
		if uid, ok := strings.CutPrefix(seg, "pod"); ok && isUUID(uid, '-') {
			return types.UID(uid), true
		}
		if uid, ok := systemdPodUID(seg); ok {
			return uid, true
		}
		if uid, ok := runtimePodUID(seg); ok {
			return uid, true
		}
	}
	return "", false
}

// containerIDLen is the length of a CRI container ID (containerd, CRI-O and
// docker all use 64 lowercase hex).
const containerIDLen = 64

// runtimePodUID reads "<pod slice>:<prefix>:<container id>", a systemd
// cgroupsPath written as one segment. Only that shape counts: a pod slice, a
// prefix without a colon, and a full container ID.
func runtimePodUID(seg string) (types.UID, bool) {
	slice, rest, ok := strings.Cut(seg, ":")
	if !ok {
		return "", false
	}
	prefix, id, ok := strings.Cut(rest, ":")
	id = strings.TrimSuffix(id, " (deleted)") // the cgroup was removed under the process
	if !ok || prefix == "" || len(id) != containerIDLen || strings.Trim(id, "0123456789abcdef") != "" {
		return "", false
	}
	return systemdPodUID(slice)
}

// systemdPodUID reads a systemd slice "<parent>-pod<uid>.slice", in which '-'
// separates parent from child, so kubelet writes the UID's dashes as '_'.
func systemdPodUID(seg string) (types.UID, bool) {
	name, ok := strings.CutSuffix(seg, ".slice")
	if !ok || len(name) < len("pod")+uuidLen {
		return "", false
	}
	pod := len(name) - uuidLen - len("pod")
	if name[pod:pod+len("pod")] != "pod" || (pod > 0 && name[pod-1] != '-') {
		return "", false
	}
	uid := name[pod+len("pod"):]
	if !isUUID(uid, '_') {
		return "", false
	}
	return types.UID(strings.ReplaceAll(uid, "_", "-")), true
}

const uuidLen = 36

// isUUID reports whether s is lowercase 8-4-4-4-12 hex with sep between the
// groups.
func isUUID(s string, sep byte) bool {
	if len(s) != uuidLen {
		return false
	}
	for i := range len(s) {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != sep {
				return false
			}
		default:
			if (s[i] < '0' || s[i] > '9') && (s[i] < 'a' || s[i] > 'f') {
				return false
			}
		}
	}
	return true
}
