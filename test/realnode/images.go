package realnode

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Image is one OCI image the node gets without a registry.
type Image struct {
	Ref        string
	Entrypoint []string
	User       string
	// Files maps a path in the image to a file on this machine.
	Files map[string]string
}

// ShippedImage returns the image reference a shipped manifest names, so the
// images built here carry exactly the references the manifests use and the
// manifests' pull policy (IfNotPresent for a version tag) finds them.
func ShippedImage(manifest string) (string, error) {
	data, err := os.ReadFile(manifest)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^\s+image:\s*(\S+)\s*$`).FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("no image in %s", manifest)
	}
	return string(m[1]), nil
}

// buildBinaries builds the two shipped binaries as their Dockerfiles do, and
// the pause binary, into dir.
func buildBinaries(root, dir string, logf func(string, ...any)) error {
	// The shipped binaries are built as `make build` and the Dockerfiles
	// build them (-trimpath); the harness's own as tests are, sharing their
	// build cache.
	builds := []struct {
		out, pkg string
		env      []string
		flags    []string
	}{
		{"power-webhook", "./cmd/webhook", []string{"CGO_ENABLED=0"}, []string{"-trimpath", "-ldflags=-s -w"}},
		{"power-agent", "./cmd/agent", []string{"CGO_ENABLED=1", "CGO_CFLAGS=-Wno-deprecated-declarations"}, []string{"-trimpath", "-ldflags=-s -w"}},
		{"pause", "./test/realnode/cmd/pause", []string{"CGO_ENABLED=0"}, nil},
		{"realnode", "./test/realnode/cmd/realnode", nil, nil},
	}
	for _, b := range builds {
		start := time.Now()
		args := append(append([]string{"build"}, b.flags...), "-o", filepath.Join(dir, b.out), b.pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
		logf("built %s in %s", b.out, time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// agentRuntimeFiles lists the shared libraries a cgo binary loads (ldd),
// which the agent image must carry. NVML is never among them: the agent
// dlopens it at run time, from the NVIDIA runtime's mount on a GPU node.
func agentRuntimeFiles(bin string) (map[string]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	files := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var p string
		switch {
		case len(f) >= 3 && f[1] == "=>":
			p = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			p = f[0]
		}
		if p == "" || !strings.HasPrefix(p, "/") {
			continue // linux-vdso.so.1 lives in the kernel
		}
		if strings.Contains(p, "nvidia-ml") {
			return nil, fmt.Errorf("%s links libnvidia-ml (%s): the agent must load NVML at run time only", bin, p)
		}
		files[p] = p
	}
	return files, sc.Err()
}

// layerTar makes one tar layer of files, with their parent folders.
func layerTar(files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, dst := range sortedKeys(files) {
		rel := strings.TrimPrefix(dst, "/")
		parts := strings.Split(filepath.Dir(rel), "/")
		for i := range parts {
			d := strings.Join(parts[:i+1], "/")
			if d == "." || dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755}); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(files[dst]) // follows symlinks: the image gets the file itself
		if err != nil {
			return nil, err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data))}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeImage writes img as a docker-archive tarball that
// `ctr images import` reads.
func writeImage(img Image, path string) error {
	data, err := layerTar(img.Files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return err
	}
	oci, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := oci.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config = v1.Config{Entrypoint: img.Entrypoint, User: img.User, Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}}
	if oci, err = mutate.ConfigFile(oci, cfg); err != nil {
		return err
	}
	tag, err := name.NewTag(img.Ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, oci)
}

// imagePath is where the node's image tarball of ref is kept.
func imagePath(ref string) string {
	return filepath.Join(Dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
}

// ImageFiles lists the files of an image the running node imported.
func ImageFiles(ref string) ([]string, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return nil, err
	}
	img, err := tarball.ImageFromPath(imagePath(ref), &tag)
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var files []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, err
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				_ = rc.Close()
				return nil, err
			}
			files = append(files, "/"+h.Name)
		}
		_ = rc.Close()
	}
	return files, nil
}

// images are the node's images: both shipped binaries and the pause binary
// (the sandbox image, and the workload image of GPU test pods).
func images(root, binDir string) ([]Image, error) {
	webhookRef, err := ShippedImage(filepath.Join(root, "deploy", "webhook", "30-deployment.yaml"))
	if err != nil {
		return nil, err
	}
	agentRef, err := ShippedImage(filepath.Join(root, "deploy", "agent", "daemonset.yaml"))
	if err != nil {
		return nil, err
	}
	agentFiles, err := agentRuntimeFiles(filepath.Join(binDir, "power-agent"))
	if err != nil {
		return nil, err
	}
	agentFiles["/usr/local/bin/power-agent"] = filepath.Join(binDir, "power-agent")
	return []Image{
		{Ref: webhookRef, Entrypoint: []string{"/usr/local/bin/power-webhook"}, User: "65532:65532",
			Files: map[string]string{"/usr/local/bin/power-webhook": filepath.Join(binDir, "power-webhook")}},
		{Ref: agentRef, Entrypoint: []string{"/usr/local/bin/power-agent"}, Files: agentFiles},
		{Ref: PauseImage, Entrypoint: []string{"/pause"}, Files: map[string]string{"/pause": filepath.Join(binDir, "pause")}},
	}, nil
}
