package imagebuild_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dynamo-power/gpu-power/internal/imagebuild"
)

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	return root
}

// TestBuiltImages is `make images` twice, the first time pushing to a
// registry in this process: both images hold the binary built, run it as
// the Dockerfiles say, read back from their archives and the registry with
// the same digest, and the second build gives the same digests and bytes.
func TestBuiltImages(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	repo := strings.TrimPrefix(srv.URL, "http://") + "/team"
	root := moduleRoot(t)
	build := func(push bool) []imagebuild.Result {
		dir := t.TempDir()
		res, err := imagebuild.Make(t.Context(), imagebuild.Config{
			Root: root, BinDir: filepath.Join(dir, "bin"), Out: filepath.Join(dir, "images"),
			Repo: repo, Tag: "v0.1.0", Push: push,
		}, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 2 {
			t.Fatalf("%d images; want power-webhook and power-agent", len(res))
		}
		return res
	}
	first := build(true)
	for i, b := range imagebuild.Shipped() {
		r := first[i]
		t.Run(b.Name, func(t *testing.T) {
			if want := repo + "/" + b.Name + ":v0.1.0"; r.Ref.String() != want {
				t.Errorf("ref %s; want %s", r.Ref, want)
			}
			if want := filepath.Join(filepath.Dir(r.Archive), b.Name+".tar"); r.Archive != want {
				t.Errorf("archive %s; want %s", r.Archive, want)
			}
			checkImage(t, b, r.Image, filepath.Join(filepath.Dir(filepath.Dir(r.Archive)), "bin", b.Name))

			checkLayout(t, r)
			fromArchive, err := imagebuild.ReadArchive(r.Archive, r.Ref)
			if err != nil {
				t.Fatal(err)
			}
			if d, err := fromArchive.Digest(); err != nil || d != r.Digest {
				t.Errorf("the archive's image is %s (%v); built %s", d, err, r.Digest)
			}

			if want := r.Ref.Context().Digest(r.Digest.String()); r.Pushed != want {
				t.Errorf("pushed %s; want %s", r.Pushed, want)
			}
			pulled, err := remote.Image(r.Pushed, remote.WithContext(t.Context()))
			if err != nil {
				t.Fatal(err)
			}
			if d, err := pulled.Digest(); err != nil || d != r.Digest {
				t.Errorf("pulled %s by digest: %s (%v)", r.Pushed, d, err)
			}
			checkImage(t, b, pulled, filepath.Join(filepath.Dir(filepath.Dir(r.Archive)), "bin", b.Name))
			head, err := remote.Head(r.Ref, remote.WithContext(t.Context()))
			if err != nil {
				t.Fatal(err)
			}
			if head.Digest != r.Digest {
				t.Errorf("the registry's %s is %s; pushed %s", r.Ref, head.Digest, r.Digest)
			}
		})
	}

	second := build(false)
	for i := range second {
		a, b := first[i], second[i]
		if a.Digest != b.Digest {
			t.Errorf("%s: two builds gave %s and %s", a.Ref, a.Digest, b.Digest)
		}
		if fa, fb := fileSum(t, a.Archive), fileSum(t, b.Archive); fa != fb {
			t.Errorf("%s: two builds wrote different archives", a.Ref)
		}
		if b.Pushed != (name.Digest{}) {
			t.Errorf("pushed %s without Push", b.Pushed)
		}
	}
}

// checkImage: the config runs the binary as the Dockerfile says, the last
// layer is the binary built at bin and nothing else, and the base has the
// users; the agent image has its C runtime and never NVML.
func checkImage(t *testing.T, b imagebuild.Binary, img v1.Image, bin string) {
	t.Helper()
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	entry := "/usr/local/bin/" + b.Name
	if !slices.Equal(cfg.Config.Entrypoint, []string{entry}) {
		t.Errorf("entrypoint %q; want [%s]", cfg.Config.Entrypoint, entry)
	}
	wantUser := map[string]string{"power-webhook": "65532:65532", "power-agent": ""}[b.Name]
	if cfg.Config.User != wantUser {
		t.Errorf("user %q; want %q", cfg.Config.User, wantUser)
	}
	epoch, err := imagebuild.SourceDateEpoch()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || !cfg.Created.Equal(epoch) {
		t.Errorf("os %q, created %s; want linux, %s (SOURCE_DATE_EPOCH or 1970)", cfg.OS, cfg.Created, epoch)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.source":  imagebuild.Source,
		"org.opencontainers.image.version": "v0.1.0",
		"org.opencontainers.image.title":   b.Name,
	} {
		if cfg.Config.Labels[k] != v {
			t.Errorf("label %s=%q; want %q", k, cfg.Config.Labels[k], v)
		}
	}
	if rev := imagebuild.Revision(moduleRoot(t)); cfg.Config.Labels["org.opencontainers.image.revision"] != rev {
		t.Errorf("revision label %q; want %q", cfg.Config.Labels["org.opencontainers.image.revision"], rev)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	wantLayers := map[string]int{"power-webhook": 2, "power-agent": 3}[b.Name] // base, [C runtime,] binary
	if len(layers) != wantLayers {
		t.Fatalf("%d layers; want %d", len(layers), wantLayers)
	}
	top, err := imagebuild.Files(&oneLayer{img, layers[len(layers)-1]})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr", "/usr/local", "/usr/local/bin", entry}; !slices.Equal(top, want) {
		t.Errorf("the binary's layer holds %q; want %q", top, want)
	}
	inImage, err := imagebuild.ReadFile(img, entry)
	if err != nil {
		t.Fatal(err)
	}
	built, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inImage, built) {
		t.Errorf("%s in the image is not the binary built (%d and %d bytes)", entry, len(inImage), len(built))
	}
	passwd, err := imagebuild.ReadFile(img, "/etc/passwd")
	if err != nil || !strings.Contains(string(passwd), "\nnonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd: %q, %v; want the nonroot user 65532", passwd, err)
	}

	f, err := elf.NewFile(bytes.NewReader(inImage))
	if err != nil {
		t.Fatal(err)
	}
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(p.Open())
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	files, err := imagebuild.Files(img)
	if err != nil {
		t.Fatal(err)
	}
	switch b.Name {
	case "power-webhook":
		if interp != "" {
			t.Errorf("power-webhook asks for the loader %s; it must be static", interp)
		}
		if len(files) != 12 { // base 8, binary 4
			t.Errorf("the webhook image holds %q; want the base and the binary only", files)
		}
	case "power-agent":
		if interp == "" || !slices.Contains(files, interp) {
			t.Errorf("power-agent's loader %q is not in the image: %q", interp, files)
		}
		if !slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, "/libc.so.6") }) {
			t.Errorf("the agent image has no libc.so.6: %q", files)
		}
		// What NVML itself links, so its dlopen on a GPU node finds them.
		for _, lib := range imagebuild.NVMLNeeds {
			if !slices.ContainsFunc(files, func(f string) bool { return strings.HasSuffix(f, "/"+lib) }) {
				t.Errorf("the agent image has no %s, which libnvidia-ml.so.1 needs: %q", lib, files)
			}
		}
		for _, f := range files {
			if strings.Contains(f, "nvidia-ml") {
				t.Errorf("the agent image bundles %s; NVML comes from the node's driver", f)
			}
		}
	}
}

// checkLayout: the archive is also an OCI image layout whose index names
// the image by its reference and points at its manifest, byte for byte, with
// every blob it needs, so containerd imports it under the same digest.
func checkLayout(t *testing.T, r imagebuild.Result) {
	t.Helper()
	f, err := os.Open(r.Archive)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	entries := map[string][]byte{}
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(time.Unix(0, 0)) && !h.ModTime.IsZero() {
			t.Errorf("%s has the time %s", h.Name, h.ModTime)
		}
		entries[h.Name] = b
		names = append(names, h.Name)
	}
	if string(entries["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout %q", entries["oci-layout"])
	}
	var index v1.IndexManifest
	if err := json.Unmarshal(entries["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 1 || index.Manifests[0].Digest != r.Digest ||
		index.Manifests[0].Annotations["io.containerd.image.name"] != r.Ref.Name() ||
		index.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != r.Ref.TagStr() {
		t.Fatalf("index.json %s; want one manifest, %s, named %s", entries["index.json"], r.Digest, r.Ref)
	}
	raw, err := r.Image.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got := entries["blobs/sha256/"+r.Digest.Hex]; !bytes.Equal(got, raw) {
		t.Errorf("the layout's manifest %q; the image's %q", got, raw)
	}
	m, err := r.Image.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		b, ok := entries["blobs/sha256/"+d.Digest.Hex]
		if !ok || int64(len(b)) != d.Size || sha256.Sum256(b) != [32]byte(mustHex(t, d.Digest.Hex)) {
			t.Errorf("blob %s: missing or not its digest", d.Digest)
		}
	}
	if want := 4 + len(m.Layers) + 1; len(names) != want { // oci-layout, config, layers, manifest, index.json, manifest.json
		t.Errorf("archive entries %q; want %d", names, want)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// oneLayer is img with only one of its layers, to list that layer's files.
type oneLayer struct {
	v1.Image
	l v1.Layer
}

func (o *oneLayer) Layers() ([]v1.Layer, error) { return []v1.Layer{o.l}, nil }

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// TestBuildIsReproducible: the same files give the same digest, whatever
// their times here; SOURCE_DATE_EPOCH is every time in the image.
func TestBuildIsReproducible(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "tool")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag("registry.example.com/team/tool:v1")
	if err != nil {
		t.Fatal(err)
	}
	spec := imagebuild.Spec{Ref: ref, Entrypoint: []string{"/tool"}, Files: map[string]string{"/tool": bin}}
	digest := func(o imagebuild.Options) v1.Hash {
		t.Helper()
		img, err := imagebuild.Build(spec, o)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	t.Setenv("SOURCE_DATE_EPOCH", "")
	o, err := imagebuild.DefaultOptions(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !o.Created.Equal(time.Unix(0, 0)) || o.Revision != "" {
		t.Errorf("default options outside a repository: %+v; want 1970 and no revision", o)
	}
	a := digest(o)
	if err := os.Chtimes(bin, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if b := digest(o); a != b {
		t.Errorf("a file's time here changed the digest: %s, %s", a, b)
	}

	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if o, err = imagebuild.DefaultOptions(dir); err != nil {
		t.Fatal(err)
	}
	if !o.Created.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %s; want SOURCE_DATE_EPOCH", o.Created)
	}
	img, err := imagebuild.Build(spec, o)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d == a {
		t.Error("SOURCE_DATE_EPOCH did not change the digest")
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Created.Equal(o.Created) || len(cfg.History) != 2 || !cfg.History[1].Created.Equal(o.Created) {
		t.Errorf("created %s, history %+v; want SOURCE_DATE_EPOCH everywhere", cfg.Created, cfg.History)
	}
	for _, bad := range []string{"yesterday", "-1", "1.5"} {
		t.Setenv("SOURCE_DATE_EPOCH", bad)
		if _, err := imagebuild.SourceDateEpoch(); err == nil {
			t.Errorf("SOURCE_DATE_EPOCH=%q accepted", bad)
		}
	}
}

// TestRefRefusesLatest: a version tag or nothing.
func TestRefRefusesLatest(t *testing.T) {
	for _, c := range []struct {
		repo, tag, want string
	}{
		{"registry.example.com/team", "v0.1.0", "registry.example.com/team/power-agent:v0.1.0"},
		{"registry.example.com/team/", "v0.2.0-rc.1", "registry.example.com/team/power-agent:v0.2.0-rc.1"},
		{"localhost:5000", "v1", "localhost:5000/power-agent:v1"},
		{"registry.example.com/team", "latest", ""},
		{"registry.example.com/team", "", ""},
		{"Registry Example", "v1", ""},
		{"team", "v1", ""}, // which registry?
		{"registry.example.com/team", "v1:2", ""},
	} {
		ref, err := imagebuild.Ref(c.repo, c.tag, imagebuild.Agent)
		switch {
		case c.want == "" && err == nil:
			t.Errorf("Ref(%q, %q) = %s; want an error", c.repo, c.tag, ref)
		case c.want != "" && (err != nil || ref.String() != c.want):
			t.Errorf("Ref(%q, %q) = %s, %v; want %s", c.repo, c.tag, ref, err, c.want)
		}
	}
	latest, err := name.NewTag("registry.example.com/team/power-agent:latest")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := imagebuild.Push(t.Context(), nil, latest); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("Push of latest: %v; want a refusal", err)
	}
}
