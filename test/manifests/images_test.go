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

	"github.com/dynamo-power/gpu-power/internal/imagebuild"
	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
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

// The TestBuilt tests compile both binaries as the Dockerfiles do, so they
// run with the integration level (make test-integration), not make test-unit.
//
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

// TestBuiltWebhookImage: a static binary on distroless, as non-root.
func TestBuiltWebhookImage(t *testing.T) {
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

// TestBuiltAgentImage: glibc for the cgo binary, no NVML library bundled, and no
// glibc symbol newer than the runtime image's Debian 12 (glibc 2.36) has.
func TestBuiltAgentImage(t *testing.T) {
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

// shellWords splits a shell command line into words, with single and double
// quotes (no escapes, no expansions: enough for a build line).
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	in, quote := false, rune(0)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

// goBuild splits a go build command line into its leading environment,
// its flags (before -o) and the package.
func goBuild(t *testing.T, line string) (env, flags []string, pkg string) {
	t.Helper()
	w := shellWords(line)
	i := 0
	for ; i < len(w) && strings.Contains(w[i], "=") && !strings.HasPrefix(w[i], "-"); i++ {
		env = append(env, w[i])
	}
	if len(w) < i+2 || w[i] != "go" || w[i+1] != "build" {
		t.Fatalf("not a go build line: %q", line)
	}
	for i += 2; i < len(w) && w[i] != "-o"; i++ {
		flags = append(flags, w[i])
	}
	return env, flags, w[len(w)-1]
}

// TestImagesBuildLikeTheDockerfiles: `make images` (internal/imagebuild),
// `make build` and the Dockerfiles build the shipped binaries with the same
// flags and environment, and the images run them as the Dockerfiles do, under
// the references the Makefile and the manifests name.
func TestImagesBuildLikeTheDockerfiles(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(envtestenv.Root(), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^BUILD_FLAGS\s*:?=\s*(.+)$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("Makefile has no BUILD_FLAGS")
	}
	if got := shellWords(string(m[1])); !slices.Equal(got, imagebuild.BuildFlags) {
		t.Errorf("make build's flags %q; the images' are %q", got, imagebuild.BuildFlags)
	}
	for _, v := range []struct{ name, want string }{{"IMAGE_REPO", imagebuild.DefaultRepo}, {"IMAGE_TAG", imagebuild.DefaultTag}} {
		var got string
		if m := regexp.MustCompile(`(?m)^` + v.name + `\s*\?=\s*(\S+)`).FindSubmatch(mk); m != nil {
			got = string(m[1])
		}
		if got != v.want {
			t.Errorf("Makefile %s %q; cmd/images defaults to %q", v.name, got, v.want)
		}
	}

	for file, b := range map[string]imagebuild.Binary{"webhook.Dockerfile": imagebuild.Webhook, "agent.Dockerfile": imagebuild.Agent} {
		steps := dockerfile(t, file)
		var line string
		for _, run := range args(steps, "RUN") {
			if strings.Contains(run, "go build") {
				line = run
			}
		}
		env, flags, pkg := goBuild(t, line)
		if !slices.Equal(flags, b.Flags) || pkg != b.Package {
			t.Errorf("%s builds %s with %q; the image builds %s with %q", file, pkg, flags, b.Package, b.Flags)
		}
		slices.Sort(env)
		want := slices.Sorted(slices.Values(b.Env))
		if !slices.Equal(env, want) {
			t.Errorf("%s builds with %q; the image with %q", file, env, want)
		}
		final := finalStage(steps)
		wantUser := map[string]string{"power-webhook": imagebuild.NonRoot, "power-agent": ""}[b.Name]
		if got := strings.Join(args(final, "USER"), " "); got != wantUser {
			t.Errorf("%s runs as %q; the image as %q", file, got, wantUser)
		}
		checkEntrypoint(t, final, "/usr/local/bin/"+b.Name)
	}
}
