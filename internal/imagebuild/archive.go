package imagebuild

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// WriteArchive writes img, tagged ref, as one tarball in two formats at
// once, as `docker save` has since Docker 25: an OCI image layout (oci-layout,
// index.json naming ref, blobs/sha256/...) and, over the same blobs, the
// docker-archive manifest.json. `ctr images import` (and so `kind load
// image-archive`) reads the layout and keeps the manifest as it is, so a
// node that imported the file has the image under the digest Push prints;
// `crane push FILE REF`, `docker load`, `podman load` and `skopeo copy
// docker-archive:FILE` read manifest.json. Entries are in a fixed order with
// no times, so the same image always gives the same bytes.
func WriteArchive(path string, ref name.Tag, img v1.Image) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	err = writeArchive(f, ref, img)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

func writeArchive(w io.Writer, ref name.Tag, img v1.Image) error {
	tw := tar.NewWriter(w)
	put := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size}); err != nil {
			return err
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != size {
			err = fmt.Errorf("%s: %d bytes, want %d", name, n, size)
		}
		return err
	}
	putBytes := func(name string, b []byte) error { return put(name, int64(len(b)), bytes.NewReader(b)) }
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

	if err := putBytes("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	cfgName, err := img.ConfigName()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if err := putBytes(blob(cfgName), cfg); err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	var layerFiles []string
	seen := map[v1.Hash]bool{}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		layerFiles = append(layerFiles, blob(d))
		if seen[d] {
			continue
		}
		seen[d] = true
		size, err := l.Size()
		if err != nil {
			return err
		}
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		err = put(blob(d), size, rc)
		_ = rc.Close()
		if err != nil {
			return err
		}
	}
	manifest, err := img.RawManifest()
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	mt, err := img.MediaType()
	if err != nil {
		return err
	}
	if err := putBytes(blob(digest), manifest); err != nil {
		return err
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{MediaType: mt, Size: int64(len(manifest)), Digest: digest,
			Annotations: map[string]string{
				"io.containerd.image.name":          ref.Name(),
				"org.opencontainers.image.ref.name": ref.TagStr(),
			}}},
	})
	if err != nil {
		return err
	}
	if err := putBytes("index.json", index); err != nil {
		return err
	}
	docker, err := json.Marshal(tarball.Manifest{{Config: blob(cfgName), RepoTags: []string{ref.Name()}, Layers: layerFiles}})
	if err != nil {
		return err
	}
	if err := putBytes("manifest.json", docker); err != nil {
		return err
	}
	return tw.Close()
}

// ReadArchive reads the image tagged ref from a WriteArchive tarball.
func ReadArchive(path string, ref name.Tag) (v1.Image, error) {
	return tarball.ImageFromPath(path, &ref)
}

// Files lists the paths in img's layers, each with a leading slash, layer
// by layer.
func Files(img v1.Image) ([]string, error) {
	var files []string
	err := walk(img, func(h *tar.Header, _ io.Reader) error {
		files = append(files, "/"+strings.TrimSuffix(h.Name, "/"))
		return nil
	})
	return files, err
}

// ReadFile returns the contents of the regular file at p (absolute) in
// img's top-most layer that holds it.
func ReadFile(img v1.Image, p string) ([]byte, error) {
	want := strings.TrimPrefix(p, "/")
	var data []byte
	var found bool
	err := walk(img, func(h *tar.Header, r io.Reader) error {
		if h.Name != want || h.Typeflag != tar.TypeReg {
			return nil
		}
		b, err := io.ReadAll(r)
		data, found = b, true
		return err
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%s: not in the image", p)
	}
	return data, nil
}

// walk calls fn for each entry of each layer, bottom layer first.
func walk(img v1.Image, fn func(*tar.Header, io.Reader) error) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			return err
		}
		tr := tar.NewReader(rc)
		for err == nil {
			var h *tar.Header
			if h, err = tr.Next(); err == nil {
				err = fn(h, tr)
			}
		}
		_ = rc.Close()
		if !errors.Is(err, io.EOF) {
			return err
		}
	}
	return nil
}
