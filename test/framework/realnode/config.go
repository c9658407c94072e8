package realnode

import (
	"fmt"
	"os"
	"path/filepath"
)

// containerdConfig keeps every path of containerd's in Dir, so it never
// touches a containerd the machine may already run.
func containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # This machine's root lacks CAP_SYS_RESOURCE: without this every sandbox
  # fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
`, filepath.Join(Dir, "containerd", "root"), filepath.Join(Dir, "containerd", "state"), ContainerdSocket,
		ContainerdSocket+".ttrpc", filepath.Join(Dir, "containerd", "opt"), PauseImage, cniBinDir, filepath.Join(Dir, "cni", "net.d"))
}

const cniBinDir = "/usr/lib/cni"

// cniConfig puts pods on a bridge of their own. Pods get no default route:
// they reach the node and the API server's address, and nothing else.
func cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "gpu-power-realnode",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": %q, "gw": %q}],
        "dataDir": %q
      }
    }
  ]
}
`, Bridge, PodSubnet, ServiceSubnet, NodeIP, filepath.Join(Dir, "cni", "ipam"))
}

// kubeletConfig is the kubelet's configuration on this machine: cgroupfs on
// cgroup v1, its own containerd, client certificates only.
func kubeletConfig(p pki) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 100Mi
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# Secret volumes (the webhook's certificate) are refreshed on each pod sync.
syncFrequency: 10s
`, ContainerdSocket, NodeIP, p.path("ca.crt"))
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}
