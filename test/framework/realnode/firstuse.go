package realnode

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// firstUseArtefact is something a tool the node runs creates the first time
// it runs on a machine and keeps for every later run, whoever runs it. It is
// part of the machine, not of the cluster: teardown leaves it, and the host
// comparison accepts it when it appears, but only with the kind of file the
// tool makes (anything else at its path is still a difference).
type firstUseArtefact struct {
	Path string
	Dir  bool
	// Why names the tool and says why it keeps the file.
	Why string
	// inUse says why removing it now would harm the machine ("" when it is
	// safe): ForgetFirstUse refuses then.
	inUse func(path string) string
}

// firstUseArtefacts are the ones the harness knows; docs/cluster.md lists
// them next to what teardown removes.
var firstUseArtefacts = []firstUseArtefact{
	{
		Path: "/run/mount", Dir: true,
		Why:   "util-linux libmount's folder for utab (userspace mount options) and its lock; made by the first mount(8) or umount(8) on the machine (the kubelet mounts pods' volumes with mount(8))",
		inUse: utabInUse,
	},
	{
		Path:  "/run/xtables.lock",
		Why:   "the lock file iptables takes on every run; made by its first run (the CNI bridge plugin's masquerade rules, the kubelet's own chains)",
		inUse: lockInUse,
	},
}

// firstUseKinds records, for each known artefact, what is at its path: "dir",
// "file", "other", or "" when nothing is.
func firstUseKinds() map[string]string {
	kinds := map[string]string{}
	for _, a := range firstUseArtefacts {
		kinds[a.Path] = pathKind(a.Path)
	}
	return kinds
}

func pathKind(p string) string {
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return ""
	case fi.IsDir():
		return "dir"
	case fi.Mode().IsRegular():
		return "file"
	default:
		return "other"
	}
}

// keptFirstUse reports whether entry name of dir appeared as a first-use
// artefact of the right kind, given the kinds recorded after teardown.
func keptFirstUse(dir, name string, after map[string]string) bool {
	p := filepath.Join(dir, name)
	for _, a := range firstUseArtefacts {
		if a.Path != p {
			continue
		}
		want := "file"
		if a.Dir {
			want = "dir"
		}
		return after[p] == want
	}
	return false
}

// ForgetFirstUse removes the first-use artefacts, so that a run on this
// machine meets the host as a machine that never ran the node's tools would
// (REALNODE_FRESH_HOST=1, which .ci/run sets). It refuses an artefact that is
// in use and returns what it removed.
func ForgetFirstUse() (removed []string, err error) {
	var errs []error
	for _, a := range firstUseArtefacts {
		if pathKind(a.Path) == "" {
			continue
		}
		if why := a.inUse(a.Path); why != "" {
			errs = append(errs, fmt.Errorf("keep %s: %s", a.Path, why))
			continue
		}
		if err := os.RemoveAll(a.Path); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, a.Path)
	}
	return removed, errors.Join(errs...)
}

// utabInUse: libmount's utab holds the userspace options (user, _netdev,
// x-*) of mounts made with them; an entry whose mount still exists must not
// be lost, so the folder goes only when no entry names a current mount
// point and nothing is mounted on it. (Teardown unmounts with umount(2),
// which leaves libmount's entries for mounts that are gone.)
func utabInUse(dir string) string {
	mounts, err := mountPoints()
	if err != nil {
		return "cannot read the mount table: " + err.Error()
	}
	if slices.ContainsFunc(mounts, func(m string) bool { return underAny(m, []string{dir}) }) {
		return "something is mounted there"
	}
	utab := filepath.Join(dir, "utab")
	fi, err := os.Lstat(utab)
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil || !fi.Mode().IsRegular() {
		return "its utab is not a regular file"
	}
	data, err := os.ReadFile(utab)
	if err != nil {
		return err.Error()
	}
	for _, line := range strings.Split(string(data), "\n") {
		for _, field := range strings.Fields(line) {
			if target, ok := strings.CutPrefix(field, "TARGET="); ok && slices.Contains(mounts, unescapeMount(target)) {
				return "its utab records the options of " + unescapeMount(target) + ", which is mounted"
			}
		}
	}
	return ""
}

// lockInUse: a lock file held now must stay, or the next iptables would
// lock a new file while the holder still runs.
func lockInUse(path string) string {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return ""
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return "cannot read /proc/locks to see whether it is held"
	}
	defer func() { _ = f.Close() }()
	// Each line: "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF".
	suffix := ":" + strconv.FormatUint(st.Ino, 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			if strings.Count(field, ":") == 2 && strings.HasSuffix(field, suffix) {
				return "a process holds its lock"
			}
		}
	}
	return ""
}
