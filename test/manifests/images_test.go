package manifests_test

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dynamo-power/gpu-power/test/envtestenv"
)

// dockerfile is the instructions of a Dockerfile, continuation lines joined
// and comments dropped, in order: [instruction, arguments].
func dockerfile(t *testing.T, name string) [][2]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(envtestenv.Root(), "build", name))
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	var cur string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			cur += cont + " "
			continue
		}
		cur += line
		if cur != "" {
			instr, args, _ := strings.Cut(cur, " ")
			out = append(out, [2]string{strings.ToUpper(instr), strings.TrimSpace(args)})
		}
		cur = ""
	}
	return out
}

// finalStage returns the instructions from the last FROM on.
func finalStage(steps [][2]string) [][2]string {
	last := 0
	for i, s := range steps {
		if s[0] == "FROM" {
			last = i
		}
	}
	return steps[last:]
}

func args(steps [][2]string, instr string) []string {
	var out []string
	for _, s := range steps {
		if s[0] == instr {
			out = append(out, s[1])
		}
	}
	return out
}

// buildLike runs the Dockerfile's go build command here, writing to a
// temporary folder instead of /out, and returns the binary: what the image
// would ship, short of the base image.
func buildLike(t *testing.T, steps [][2]string, name string) string {
	t.Helper()
	var build string
	for _, run := range args(steps, "RUN") {
		if strings.Contains(run, "go build") {
			build = run
		}
	}
	if build == "" {
		t.Fatal("no go build in the Dockerfile")
	}
	out := t.TempDir()
	cmd := exec.CommandContext(t.Context(), "sh", "-c", strings.ReplaceAll(build, "/out/", out+"/"))
	cmd.Dir = envtestenv.Root()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's build command failed here: %v\n%s\n%s", err, build, b)
	}
	return filepath.Join(out, name)
}

// TestWebhookImage: a static binary on distroless, as non-root.
func TestWebhookImage(t *testing.T) {
	steps := dockerfile(t, "webhook.Dockerfile")
	final := finalStage(steps)
	if from := final[0][1]; !strings.HasPrefix(from, "gcr.io/distroless/static-") || !strings.HasSuffix(from, ":nonroot") {
		t.Errorf("runtime image %q; want distroless static, nonroot", from)
	}
	if users := args(final, "USER"); len(users) != 1 || users[0] != "65532:65532" {
		t.Errorf("USER %v; want 65532:65532 (the Deployment's runAsUser)", users)
	}
	checkEntrypoint(t, final, "/usr/local/bin/power-webhook")
	bin := buildLike(t, steps, "power-webhook")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("power-webhook is dynamically linked; distroless static has no libc")
		}
	}
}

// TestAgentImage: glibc for the cgo binary, no NVML library bundled, and no
// glibc symbol newer than the runtime image's Debian 12 (glibc 2.36) has.
func TestAgentImage(t *testing.T) {
	steps := dockerfile(t, "agent.Dockerfile")
	final := finalStage(steps)
	if from := final[0][1]; from != "gcr.io/distroless/base-debian12" {
		t.Errorf("runtime image %q; want gcr.io/distroless/base-debian12 (glibc)", from)
	}
	for _, s := range steps {
		if strings.Contains(strings.ToLower(s[1]), "nvidia-ml") {
			t.Errorf("%s %s: the NVML library must come from the node's driver, never the image", s[0], s[1])
		}
	}
	checkEntrypoint(t, final, "/usr/local/bin/power-agent")
	bin := buildLike(t, steps, "power-agent")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range libs {
		if !slices.Contains([]string{"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "libresolv.so.2"}, l) {
			t.Errorf("power-agent needs %s, which distroless/base-debian12 does not have (NVML is loaded with dlopen)", l)
		}
	}
	needs, err := f.DynamicVersionNeeds()
	if err != nil {
		t.Fatal(err)
	}
	glibc := regexp.MustCompile(`^GLIBC_2\.(\d+)`)
	for _, n := range needs {
		for _, d := range n.Needs {
			if m := glibc.FindStringSubmatch(d.Dep); m != nil {
				if minor, _ := strconv.Atoi(m[1]); minor > 36 {
					t.Errorf("power-agent needs %s from %s; Debian 12 has glibc 2.36", d.Dep, n.Name)
				}
			}
		}
	}
}

func checkEntrypoint(t *testing.T, final [][2]string, path string) {
	t.Helper()
	copies := args(final, "COPY")
	if len(copies) != 1 || !strings.HasSuffix(copies[0], " "+path) {
		t.Errorf("COPY %v; want the binary copied to %s", copies, path)
	}
	if eps := args(final, "ENTRYPOINT"); len(eps) != 1 || eps[0] != `["`+path+`"]` {
		t.Errorf("ENTRYPOINT %v; want [%q]", eps, path)
	}
}

// TestImageReferences: the manifests run the images `make images` builds,
// and the build context leaves out what must not be sent to Docker.
func TestImageReferences(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(envtestenv.Root(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	val := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `\s*\?=\s*(\S+)`).FindSubmatch(mk)
		if m == nil {
			t.Fatalf("Makefile has no %s", name)
		}
		return string(m[1])
	}
	repo, tag := val("IMAGE_REPO"), val("IMAGE_TAG")
	for file, image := range map[string]string{
		"deploy/webhook/30-deployment.yaml": repo + "/power-webhook:" + tag,
		"deploy/agent/daemonset.yaml":       repo + "/power-agent:" + tag,
	} {
		data, err := os.ReadFile(filepath.Join(envtestenv.Root(), file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "image: "+image+"\n") {
			t.Errorf("%s does not run %s, the image `make images` builds", file, image)
		}
	}
	ignore, err := os.ReadFile(filepath.Join(envtestenv.Root(), ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bin/", ".git/"} {
		if !slices.Contains(strings.Fields(string(ignore)), p) {
			t.Errorf(".dockerignore does not leave out %s", p)
		}
	}
}
