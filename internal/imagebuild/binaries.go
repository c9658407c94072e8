package imagebuild

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// BuildFlags are the go build flags of both shipped binaries, wherever they
// are built: here, `make build` (its BUILD_FLAGS) and the Dockerfiles' build
// stages (test/manifests holds both to this list).
var BuildFlags = []string{"-trimpath", "-ldflags=-s -w"}

// Binary is one Go binary and how it is built.
type Binary struct {
	// Name is the file's name, and a shipped image's name.
	Name string
	// Package is the main package, relative to the module root.
	Package string
	// Env is added to the go command's environment.
	Env   []string
	Flags []string
}

// The shipped binaries. The webhook is static (no cgo); the agent needs cgo
// (go-nvml loads libnvidia-ml.so.1 with dlopen), so its image carries the C
// runtime it links (RuntimeFiles).
var (
	Webhook = Binary{Name: "power-webhook", Package: "./cmd/webhook",
		Env: []string{"CGO_ENABLED=0"}, Flags: BuildFlags}
	Agent = Binary{Name: "power-agent", Package: "./cmd/agent",
		Env: []string{"CGO_ENABLED=1", "CGO_CFLAGS=-Wno-deprecated-declarations"}, Flags: BuildFlags}
)

// Shipped lists the shipped binaries, the webhook first.
func Shipped() []Binary { return []Binary{Webhook, Agent} }

// BuildBinaries builds bins with the go command in the module at root, into
// dir (created when missing), logging each build's time.
func BuildBinaries(ctx context.Context, root, dir string, bins []Binary, logf func(string, ...any)) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, b := range bins {
		start := time.Now()
		args := append(append([]string{"build"}, b.Flags...), "-o", filepath.Join(dir, b.Name), b.Package)
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), b.Env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", b.Package, err, out)
		}
		logf("built %s in %s", filepath.Join(dir, b.Name), time.Since(start).Round(100*time.Millisecond))
	}
	return nil
}

// RuntimeFiles lists the shared libraries a cgo binary loads (what ldd
// lists: the C library and its loader), path in the image -> file here, at
// the paths the binary asks for. The image gets them from this machine, the
// one the binary was linked on, so they always match it. NVML is never
// among them: the agent loads it with dlopen at run time, from the NVIDIA
// runtime's mount on a GPU node; a binary that links it is refused.
func RuntimeFiles(bin string) (map[string]string, error) {
	if runtime.GOOS != "linux" {
		return nil, fmt.Errorf("the agent image is built on Linux only (its cgo binary and C runtime come from this machine), not %s", runtime.GOOS)
	}
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
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("ldd %s lists no shared library: is it a cgo binary?", bin)
	}
	// libnvidia-ml.so.1, which the NVIDIA runtime mounts but whose own C
	// library it does not, names these (distroless/base has them): without
	// them dlopen of NVML fails on a GPU node. They sit beside libc.
	for p := range files {
		if filepath.Base(p) != "libc.so.6" {
			continue
		}
		for _, lib := range NVMLNeeds {
			if q := filepath.Join(filepath.Dir(p), lib); fileExists(q) {
				files[q] = q
			}
		}
	}
	return files, nil
}

// NVMLNeeds are the C libraries libnvidia-ml.so.1 is linked against
// (readelf -d: NEEDED), besides libc.
var NVMLNeeds = []string{"libpthread.so.0", "libdl.so.2", "libm.so.6", "librt.so.1"}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
