package imagebuild

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Push writes img to the registry under ref, with the credentials `docker
// login`, `crane auth login` or a credential helper left in the Docker
// config (authn.DefaultKeychain), and returns the reference by digest to pin.
func Push(ctx context.Context, img v1.Image, ref name.Tag, opts ...remote.Option) (name.Digest, error) {
	if ref.TagStr() == "latest" {
		return name.Digest{}, fmt.Errorf("refusing to push %s: give a version tag", ref)
	}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.Write(ref, img, opts...); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	return ref.Context().Digest(d.String()), nil
}

// Config is one run of `make images`.
type Config struct {
	// Root is the module's root.
	Root string
	// BinDir receives the binaries, Out the archives (<name>.tar).
	BinDir, Out string
	Repo, Tag   string
	// Push writes both images to Repo after building them.
	Push bool
}

// Result is one image Make built.
type Result struct {
	Ref     name.Tag
	Archive string
	Digest  v1.Hash
	// Pushed is the pushed image by digest; empty without Config.Push.
	Pushed name.Digest
	Image  v1.Image
}

// Make builds both shipped binaries and their images, writes each image's
// archive, and pushes them when asked: `make images`.
func Make(ctx context.Context, c Config, logf func(string, ...any)) ([]Result, error) {
	var refs []name.Tag
	for _, b := range Shipped() {
		ref, err := Ref(c.Repo, c.Tag, b)
		if err != nil {
			return nil, err
		}
		refs = append(refs, ref)
	}
	opts, err := DefaultOptions(c.Root)
	if err != nil {
		return nil, err
	}
	if err := BuildBinaries(ctx, c.Root, c.BinDir, Shipped(), logf); err != nil {
		return nil, err
	}
	var out []Result
	for i, b := range Shipped() {
		spec, err := ShippedSpec(b, c.BinDir, refs[i])
		if err != nil {
			return nil, err
		}
		img, err := Build(spec, opts)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Ref, err)
		}
		r := Result{Ref: spec.Ref, Archive: filepath.Join(c.Out, b.Name+".tar"), Image: img}
		if r.Digest, err = img.Digest(); err != nil {
			return nil, err
		}
		if err := WriteArchive(r.Archive, r.Ref, img); err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Ref, err)
		}
		logf("wrote %s: %s %s", r.Archive, r.Ref, r.Digest)
		out = append(out, r)
	}
	if !c.Push {
		return out, nil
	}
	for i := range out {
		if out[i].Pushed, err = Push(ctx, out[i].Image, out[i].Ref); err != nil {
			return nil, err
		}
		logf("pushed %s", out[i].Ref)
	}
	return out, nil
}
