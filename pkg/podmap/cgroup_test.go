package podmap_test

import (
	"errors"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"

	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/podmap"
)

// Pod UIDs and a container ID seen on real nodes (cgroup samples and a real
// kubelet, cgroupfs driver, cgroup v1 hybrid).
const (
	uidA = "51b64565-2b17-4d46-83ac-22e398f2f7fb"
	uidB = "d0511cd2-29d2-4215-be0f-f77bc0609d99"
	uidC = "7922aa99-d4aa-4885-a953-82976860b23a"
	uidD = "d8259892-8372-41e6-a3ca-595e7e9a7d82"
	uidE = "5f0c0d3e-9a8b-4c1d-8e2f-3a4b5c6d7e8f"
	cid  = "0d59b6ed52311ae2491e8a63eb1cbbd693121198727f0952849828e63b2b586f"
)

// underscored is how kubelet's systemd driver writes a UID into a slice name.
func underscored(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

var cgroupTests = []struct {
	name    string
	content string
	want    types.UID // "" means no pod
}{
	// Every shape of the cgroup samples.
	{"v1, cgroupfs, Burstable",
		"11:blkio:/kubepods/burstable/pod" + uidA + "/" + cid + "\n", uidA},
	{"cgroupfs, Guaranteed has no QoS segment",
		"0::/kubepods/pod" + uidA + "/" + cid + "\n", uidA},
	{"cgroupfs, BestEffort",
		"0::/kubepods/besteffort/pod" + uidA + "/" + cid + "\n", uidA},
	{"v1, systemd, CRI-O",
		"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscored(uidB) + ".slice/crio-" + cid + ".scope\n", uidB},
	{"v2, systemd, containerd, Burstable",
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscored(uidB) + ".slice/cri-containerd-" + cid + ".scope\n", uidB},
	{"v2, systemd, Guaranteed",
		"0::/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice/crio-" + cid + ".scope\n", uidC},
	{"v2, systemd, BestEffort",
		"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + underscored(uidC) + ".slice/cri-containerd-" + cid + ".scope\n", uidC},
	{"systemd, docker runtime",
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscored(uidC) + ".slice/docker-" + cid + ".scope\n", uidC},
	{"containerd's own service is in no pod", "0::/system.slice/containerd.service\n", ""},
	{"a login session is in no pod", "0::/user.slice/user-1000.slice/session-3.scope\n", ""},
	{"CUDA process outside Kubernetes on a real H100 is in no pod", "0::/process_api/578764acb041b820a72f833fcd87f644\n", ""},

	// What a real kubelet produced: one line per hierarchy, all the same path.
	{"real kubelet, v1 hybrid, one line per hierarchy",
		"9:name=systemd:/kubepods/burstable/pod" + uidD + "/" + cid + "\n" +
			"4:memory:/kubepods/burstable/pod" + uidD + "/" + cid + "\n" +
			"0::/kubepods/burstable/pod" + uidD + "/" + cid + "\n", uidD},
	{"v1 hybrid, hierarchies at the root and an empty unified line are ignored",
		"12:rdma:/\n11:blkio:/kubepods/pod" + uidA + "/" + cid + "\n3:cpu,cpuacct:/kubepods/pod" + uidA + "/" + cid + "\n0::/\n", uidA},
	{"pause process in the pod's sandbox cgroup",
		"0::/kubepods/burstable/pod" + uidD + "/" + strings.Repeat("ab", 32) + "\n", uidD},

	// Nested roots: the pod segment may follow anything.
	{"kubelet --cgroup-root under a prefix, cgroupfs",
		"0::/some/prefix/kubepods/burstable/pod" + uidA + "/" + cid + "\n", uidA},
	{"kubelet.slice root, systemd",
		"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + underscored(uidB) + ".slice/cri-containerd-" + cid + ".scope\n", uidB},
	{"kind node seen from the host cgroup namespace",
		"0::/system.slice/docker-" + cid + ".scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + underscored(uidC) + ".slice/cri-containerd-" + cid + ".scope\n", uidC},

	// Paths relative to the reader's cgroup namespace (an agent in its own).
	{"pod beside the reader's, same QoS class, cgroupfs",
		"0::/../../pod" + uidA + "/" + cid + "\n", uidA},
	{"pod in another QoS class, systemd",
		"0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod" + underscored(uidB) + ".slice/cri-containerd-" + cid + ".scope\n", uidB},
	{"process in the reader's own container names no pod", "0::/\n", ""},
	{"process in the reader's pod, other container, names no pod", "0::/../" + cid + "\n", ""},

	// The path is everything after the second colon.
	{"path with a colon after the pod segment",
		"0::/kubepods/burstable/pod" + uidA + "/odd:name\n", uidA},
	{"path with a colon before the pod segment",
		"1:name=systemd:/weird:dir/kubepods/pod" + uidA + "/" + cid + "\n", uidA},
	{"cgroup removed under a live process",
		"0::/kubepods/burstable/pod" + uidA + "/" + cid + " (deleted)\n", uidA},
	{"no trailing newline", "0::/kubepods/pod" + uidA + "/" + cid, uidA},

	// Who wins.
	{"lines naming different pods are ambiguous",
		"4:memory:/kubepods/pod" + uidA + "/" + cid + "\n0::/kubepods/pod" + uidB + "/" + cid + "\n", ""},
	{"the kubelet's segment wins over one a container made below it",
		"0::/kubepods/burstable/pod" + uidA + "/" + cid + "/pod" + uidB + "\n", uidA},
	{"and over a systemd-looking one below it",
		"0::/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice/crio-" + cid + ".scope/kubepods-pod" + underscored(uidA) + ".slice\n", uidC},
	{"slice named for the pod alone",
		"0::/pod" + underscored(uidA) + ".slice/x\n", uidA},

	// The UID is strict.
	{"uppercase UID", "0::/kubepods/pod" + strings.ToUpper(uidA) + "/" + cid + "\n", ""},
	{"underscored UID in a cgroupfs segment", "0::/kubepods/pod" + underscored(uidA) + "/" + cid + "\n", ""},
	{"dashed UID in a systemd slice", "0::/kubepods.slice/kubepods-pod" + uidA + ".slice/x\n", ""},
	{"UID one digit short", "0::/kubepods/pod" + uidA[1:] + "/" + cid + "\n", ""},
	{"UID one digit long", "0::/kubepods/pod0" + uidA + "/" + cid + "\n", ""},
	{"UID without dashes", "0::/kubepods/pod" + strings.ReplaceAll(uidA, "-", "") + "/" + cid + "\n", ""},
	{"pod segment with more in front", "0::/kubepods/mypod" + uidA + "/" + cid + "\n", ""},
	{"slice with more in front of pod", "0::/kubepods.slice/kubepodspod" + underscored(uidA) + ".slice/x\n", ""},
	{"slice without .slice", "0::/kubepods.slice/kubepods-pod" + underscored(uidA) + ".scope/x\n", ""},

	// cgroup v1, systemd driver, containerd: "<slice>:<prefix>:<id>" as one segment.
	{"v1, systemd, containerd, cgroupsPath as one segment",
		"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscored(uidB) + ".slice:cri-containerd:" + cid + "\n" +
			"4:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + underscored(uidB) + ".slice:cri-containerd:" + cid + "\n" +
			"0::/\n", uidB},
	{"v1, systemd, containerd, Guaranteed",
		"3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + cid + "\n", uidC},
	{"v1, systemd, containerd, cgroup removed under the process",
		"3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + cid + " (deleted)\n", uidC},
	{"the runtime form and the scope form of one pod agree",
		"4:memory:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + cid + "\n" +
			"0::/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice/cri-containerd-" + cid + ".scope\n", uidC},
	{"the runtime form naming another pod than the other lines is ambiguous",
		"4:memory:/kubepods.slice/kubepods-pod" + underscored(uidA) + ".slice:cri-containerd:" + cid + "\n" +
			"0::/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice/cri-containerd-" + cid + ".scope\n", ""},
	{"runtime form below the kubelet's segment does not win",
		"0::/kubepods/pod" + uidA + "/" + cid + "/kubepods-pod" + underscored(uidB) + ".slice:cri-containerd:" + cid + "\n", uidA},
	{"runtime form without a prefix", "3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice::" + cid + "\n", ""},
	{"runtime form with a short container ID", "3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + cid[1:] + "\n", ""},
	{"runtime form with an uppercase container ID", "3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + strings.ToUpper(cid) + "\n", ""},
	{"runtime form with a fourth part", "3:devices:/kubepods.slice/kubepods-pod" + underscored(uidC) + ".slice:cri-containerd:" + cid + ":x\n", ""},
	{"runtime form whose slice is not a pod's", "3:devices:/kubepods.slice/kubepods-burstable.slice:cri-containerd:" + cid + "\n", ""},
	{"runtime form with a dashed UID", "3:devices:/kubepods.slice/kubepods-pod" + uidC + ".slice:cri-containerd:" + cid + "\n", ""},

	// Not lines the kernel writes.
	{"empty", "", ""},
	{"path without hierarchy fields", "/kubepods/pod" + uidA + "/" + cid + "\n", ""},
	{"one colon only", "0:/kubepods/pod" + uidA + "/" + cid + "\n", ""},
	{"hierarchy ID not a number", "x::/kubepods/pod" + uidA + "/" + cid + "\n", ""},
	{"relative path", "0::kubepods/pod" + uidA + "/" + cid + "\n", ""},
}

// TestCgroupSamples reads every sample of testdata/cgroup-samples.txt, the
// shapes seen on real nodes.
func TestCgroupSamples(t *testing.T) {
	data, err := os.ReadFile("testdata/cgroup-samples.txt")
	if err != nil {
		t.Fatal(err)
	}
	fill := strings.NewReplacer("<uid>", uidA, "<uid_with_underscores>", underscored(uidA), "<cid>", cid)
	uidIn := regexp.MustCompile(`[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}`)
	samples := 0
	for line := range strings.SplitSeq(string(data), "\n") {
		kind, sample, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		samples++
		sample = fill.Replace(sample)
		var want types.UID
		if kind == "pod" {
			want = types.UID(strings.ReplaceAll(uidIn.FindString(sample), "_", "-"))
		}
		if uid, ok := podmap.PodUIDFromCgroup([]byte(sample + "\n")); uid != want || ok != (want != "") {
			t.Errorf("%s: PodUIDFromCgroup = %q, %v; want %q", sample, uid, ok, want)
		}
	}
	if samples < 15 {
		t.Errorf("read %d samples; the file holds more", samples)
	}
}

func TestPodUIDFromCgroup(t *testing.T) {
	for _, tt := range cgroupTests {
		t.Run(tt.name, func(t *testing.T) {
			uid, ok := podmap.PodUIDFromCgroup([]byte(tt.content))
			if uid != tt.want || ok != (tt.want != "") {
				t.Errorf("PodUIDFromCgroup(%q) = %q, %v; want %q", tt.content, uid, ok, tt.want)
			}
		})
	}
}

var podUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func FuzzPodUIDFromCgroup(f *testing.F) {
	for _, tt := range cgroupTests {
		f.Add([]byte(tt.content))
	}
	f.Fuzz(func(t *testing.T, content []byte) {
		uid, ok := podmap.PodUIDFromCgroup(content)
		if ok != (uid != "") {
			t.Fatalf("PodUIDFromCgroup(%q) = %q, %v", content, uid, ok)
		}
		if !ok {
			return
		}
		if !podUID.MatchString(string(uid)) {
			t.Fatalf("PodUIDFromCgroup(%q) = %q, not a lowercase UUID", content, uid)
		}
		if s := string(content); !strings.Contains(s, string(uid)) && !strings.Contains(s, underscored(string(uid))) {
			t.Fatalf("PodUIDFromCgroup(%q) = %q, which the input does not contain", content, uid)
		}
	})
}

func TestPodOfPID(t *testing.T) {
	proc := fstest.MapFS{
		"440/cgroup":  {Data: []byte("0::/process_api/578764acb041b820a72f833fcd87f644\n")},
		"1234/cgroup": {Data: []byte("0::/kubepods/burstable/pod" + uidD + "/" + cid + "\n")},
		"77/cgroup":   {Data: []byte(strings.Repeat("0::/kubepods/pod"+uidA+"/"+cid+"\n", 1000))},
	}
	tests := []struct {
		name    string
		pid     int
		want    types.UID
		gone    bool
		wantErr string
	}{
		{"process in a pod", 1234, uidD, false, ""},
		{"process outside any pod", 440, "", false, ""},
		{"process that exited is gone", 999, "", true, "open cgroup of pid 999"},
		{"file longer than any the kernel writes", 77, "", false, "cgroup of pid 77: longer than 65536 bytes"},
		{"pid 0", 0, "", false, "pid 0 out of range"},
		{"negative pid", -1, "", false, "pid -1 out of range"},
		{"pid beyond the kernel's limit", 1<<22 + 1, "", false, "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uid, ok, err := podmap.PodOfPID(proc, tt.pid)
			if uid != tt.want || ok != (tt.want != "") {
				t.Errorf("PodOfPID(%d) = %q, %v; want %q", tt.pid, uid, ok, tt.want)
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tt.gone {
				t.Errorf("PodOfPID(%d) error %v: gone = %v, want %v", tt.pid, err, got, tt.gone)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("PodOfPID(%d) error = %v; want one containing %q", tt.pid, err, tt.wantErr)
			}
		})
	}
}

// exitingProc is a procfs whose processes exit between open and read: the
// kernel then answers the read with ESRCH.
type exitingProc struct{}

func (exitingProc) Open(string) (fs.File, error) { return exitingFile{}, nil }

type exitingFile struct{}

func (exitingFile) Stat() (fs.FileInfo, error) { return nil, syscall.ESRCH }
func (exitingFile) Read([]byte) (int, error)   { return 0, syscall.ESRCH }
func (exitingFile) Close() error               { return nil }

func TestPodOfPIDProcessExitsWhileRead(t *testing.T) {
	_, ok, err := podmap.PodOfPID(exitingProc{}, 42)
	if ok || !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ESRCH) {
		t.Errorf("PodOfPID = %v, %v; want a gone error wrapping ESRCH", ok, err)
	}
}

func TestPodOfPIDOnThisHost(t *testing.T) {
	proc := os.DirFS("/proc")
	if _, _, err := podmap.PodOfPID(proc, os.Getpid()); err != nil {
		t.Errorf("PodOfPID(self): %v", err)
	}
	// PIDs stay below pid_max, whose ceiling is 1<<22.
	if _, _, err := podmap.PodOfPID(proc, 1<<22); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PodOfPID(no such process) error = %v; want gone", err)
	}
}
