// Package imagebuild builds the project's container images without Docker,
// a base image or a registry, the way ko does: a few layers written here and
// an image config, with go-containerregistry. It holds the shipped binaries'
// build (flags, environment), the image of each (entrypoint, user, labels,
// layers), the tarball each is written as (an OCI image layout and a docker
// archive in one), and the push to a registry. `make images` (cmd/images)
// and the real-node harness (test/framework/realnode) both build their images here, so
// the images a user pushes are the ones the real-node suite runs.
//
// An image is up to three layers: a base of generated files (/etc/passwd and
// /etc/group with root, nobody and nonroot (65532), like distroless;
// /etc/nsswitch.conf; /tmp; the users' homes), identical in every image; for
// the agent, the C runtime its cgo binary links, copied from this machine
// (RuntimeFiles); and the binary. Nothing is downloaded. Every file time,
// and the config's creation time, is SOURCE_DATE_EPOCH (0 when unset), so two
// builds of the same tree give the same digest.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The defaults of `make images` (IMAGE_REPO, IMAGE_TAG), which the shipped
// manifests name.
const (
	DefaultRepo = "ghcr.io/dynamo-power"
	DefaultTag  = "v0.1.0"
	// Source is the org.opencontainers.image.source label of every image.
	Source = "https://github.com/dynamo-power/gpu-power"
	// NonRoot is the webhook's user, the Deployment's runAsUser.
	NonRoot = "65532:65532"
)

// Spec is one image to build.
type Spec struct {
	Ref        name.Tag
	Entrypoint []string
	// User is the config's user; empty is root.
	User string
	// Runtime holds files the binary needs at run time (the agent's C
	// library), path in the image -> file here: a layer of its own.
	Runtime map[string]string
	// Files is the last layer (the binary), path in the image -> file here.
	Files map[string]string
}

// Options are the build's inputs that are not files.
type Options struct {
	// Created is every file's time and the config's creation time.
	Created time.Time
	// Revision is the org.opencontainers.image.revision label; empty omits it.
	Revision string
}

// DefaultOptions are the options of a build of the tree at root:
// SOURCE_DATE_EPOCH (or 0) and the tree's git revision.
func DefaultOptions(root string) (Options, error) {
	created, err := SourceDateEpoch()
	if err != nil {
		return Options{}, err
	}
	return Options{Created: created, Revision: Revision(root)}, nil
}

// SourceDateEpoch is the time SOURCE_DATE_EPOCH names (seconds since
// 1970, reproducible-builds.org), or 1970 itself when it is unset.
func SourceDateEpoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want whole seconds since 1970", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Revision is the commit checked out at root, with "-dirty" when tracked
// files differ from it; empty where git or the repository is missing.
func Revision(root string) string {
	cmd := exec.Command("git", "rev-parse", "HEAD")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	rev := strings.TrimSpace(string(out))
	diff := exec.Command("git", "diff", "--quiet", "HEAD", "--")
	diff.Dir = root
	if err := diff.Run(); err != nil {
		rev += "-dirty"
	}
	return rev
}

// Ref is the reference of a shipped binary's image: repo/name:tag. The tag
// must name a version: `latest` (or none) is refused, because a node keeps
// whatever it once pulled under a moving tag.
func Ref(repo, tag string, b Binary) (name.Tag, error) {
	if tag == "" || tag == "latest" {
		return name.Tag{}, fmt.Errorf("image tag %q: give a version (IMAGE_TAG=v0.1.0), never latest", tag)
	}
	ref, err := name.NewTag(strings.TrimSuffix(repo, "/")+"/"+b.Name+":"+tag, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image repository %q, tag %q: %w", repo, tag, err)
	}
	return ref, nil
}

// ShippedSpec is the image of a shipped binary built into binDir, as
// build/*.Dockerfile describe it: the binary at /usr/local/bin/<name> as
// the entrypoint; the webhook as nonroot, the agent as root with its C
// runtime.
func ShippedSpec(b Binary, binDir string, ref name.Tag) (Spec, error) {
	bin := "/usr/local/bin/" + b.Name
	s := Spec{Ref: ref, Entrypoint: []string{bin}, Files: map[string]string{bin: filepath.Join(binDir, b.Name)}}
	switch b.Name {
	case Webhook.Name:
		s.User = NonRoot
	case Agent.Name:
		rt, err := RuntimeFiles(s.Files[bin])
		if err != nil {
			return Spec{}, err
		}
		s.Runtime = rt
	default:
		return Spec{}, fmt.Errorf("%s is not a shipped binary", b.Name)
	}
	return s, nil
}

// Build makes the image of s.
func Build(s Spec, o Options) (v1.Image, error) {
	base, err := layer(baseEntries(), o.Created)
	if err != nil {
		return nil, err
	}
	adds := []mutate.Addendum{{Layer: base, History: v1.History{Created: v1.Time{Time: o.Created},
		CreatedBy: "imagebuild: base files", Comment: "/etc/passwd, /etc/group, /etc/nsswitch.conf, /tmp, homes"}}}
	for _, part := range []struct {
		files map[string]string
		what  string
	}{{s.Runtime, "C runtime"}, {s.Files, "binary"}} {
		if len(part.files) == 0 {
			continue
		}
		entries, err := fileEntries(part.files)
		if err != nil {
			return nil, err
		}
		l, err := layer(entries, o.Created)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{Created: v1.Time{Time: o.Created},
			CreatedBy: "imagebuild: " + part.what, Comment: strings.Join(slices.Sorted(maps.Keys(part.files)), " ")}})
	}
	img, err := mutate.Append(empty.Image, adds...)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Created = v1.Time{Time: o.Created}
	labels := map[string]string{
		"org.opencontainers.image.source":  Source,
		"org.opencontainers.image.title":   path.Base(s.Ref.RepositoryStr()),
		"org.opencontainers.image.version": s.Ref.TagStr(),
	}
	if o.Revision != "" {
		labels["org.opencontainers.image.revision"] = o.Revision
	}
	cfg.Config = v1.Config{
		Entrypoint: s.Entrypoint,
		User:       s.User,
		Env:        []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		WorkingDir: "/",
		Labels:     labels,
	}
	return mutate.ConfigFile(img, cfg)
}

// entry is one tar entry of a layer; data is nil for a folder.
type entry struct {
	name     string // without the leading slash
	mode     int64
	uid, gid int
	dir      bool
	data     []byte
}

// baseEntries are the base layer's files, the users distroless has.
func baseEntries() []entry {
	file := func(name, data string) entry { return entry{name: name, mode: 0o644, data: []byte(data)} }
	dir := func(name string, mode int64, id int) entry {
		return entry{name: name, mode: mode, uid: id, gid: id, dir: true}
	}
	return []entry{
		dir("etc", 0o755, 0),
		file("etc/group", "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"),
		file("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
		file("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\n"+
			"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"+
			"nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"),
		dir("home", 0o755, 0),
		dir("home/nonroot", 0o700, 65532),
		dir("root", 0o700, 0),
		dir("tmp", 0o1777, 0),
	}
}

// fileEntries are files (path in the image -> file here) with their parent
// folders, in name order. Links here are followed: the image gets the file.
func fileEntries(files map[string]string) ([]entry, error) {
	var out []entry
	dirs := map[string]bool{}
	for _, dst := range slices.Sorted(maps.Keys(files)) {
		rel := strings.TrimPrefix(path.Clean(dst), "/")
		if rel == "" || rel == "." || strings.HasPrefix(rel, "../") {
			return nil, fmt.Errorf("image path %q", dst)
		}
		parts := strings.Split(path.Dir(rel), "/")
		for i := range parts {
			d := strings.Join(parts[:i+1], "/")
			if d == "." || dirs[d] {
				continue
			}
			dirs[d] = true
			out = append(out, entry{name: d, mode: 0o755, dir: true})
		}
		data, err := os.ReadFile(files[dst])
		if err != nil {
			return nil, err
		}
		out = append(out, entry{name: rel, mode: 0o755, data: data})
	}
	return out, nil
}

// layer is a gzipped tar layer of entries, every time set to t and no user
// or group names, so the same entries always give the same digest.
func layer(entries []entry, t time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: t}
		if e.dir {
			h.Typeflag, h.Name = tar.TypeDir, e.name+"/"
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	// Compressed once: the digest, the archive and a push read the same bytes.
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithCompressedCaching)
}
