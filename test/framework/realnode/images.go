package realnode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/dynamo-power/gpu-power/internal/imagebuild"
)

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

// harnessBinaries are the pause binary and the harness's own, built as
// tests are (sharing their build cache), not as the shipped ones.
var harnessBinaries = []imagebuild.Binary{
	{Name: "pause", Package: "./test/framework/realnode/cmd/pause", Env: []string{"CGO_ENABLED=0"}},
	{Name: "realnode", Package: "./test/framework/realnode/cmd/realnode"},
}

// buildBinaries builds the two shipped binaries as `make images` does, and
// the harness's, into dir.
func buildBinaries(ctx context.Context, root, dir string, logf func(string, ...any)) error {
	return imagebuild.BuildBinaries(ctx, root, dir, append(imagebuild.Shipped(), harnessBinaries...), logf)
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
	img, err := imagebuild.ReadArchive(imagePath(ref), tag)
	if err != nil {
		return nil, err
	}
	return imagebuild.Files(img)
}

// images are the node's images: both shipped ones exactly as `make images`
// builds them (internal/imagebuild), under the references the manifests
// name, and the pause image (the sandbox image, and the workload image of
// GPU test pods).
func images(root, binDir string) ([]imagebuild.Spec, error) {
	var specs []imagebuild.Spec
	for _, s := range []struct {
		manifest string
		bin      imagebuild.Binary
	}{
		{filepath.Join(root, "deploy", "webhook", "30-deployment.yaml"), imagebuild.Webhook},
		{filepath.Join(root, "deploy", "agent", "daemonset.yaml"), imagebuild.Agent},
	} {
		ref, err := ShippedImage(s.manifest)
		if err != nil {
			return nil, err
		}
		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.manifest, err)
		}
		spec, err := imagebuild.ShippedSpec(s.bin, binDir, tag)
		if err != nil {
			return nil, err
		}
		specs = append(specs, spec)
	}
	pause, err := name.NewTag(PauseImage, name.StrictValidation)
	if err != nil {
		return nil, err
	}
	return append(specs, imagebuild.Spec{Ref: pause, Entrypoint: []string{"/pause"},
		Files: map[string]string{"/pause": filepath.Join(binDir, "pause")}}), nil
}

// writeImages builds the node's images and writes each as the tarball
// `make images` writes (`ctr images import` keeps its digest), returning
// the tarballs.
func writeImages(root, binDir string, logf func(string, ...any)) ([]string, error) {
	specs, err := images(root, binDir)
	if err != nil {
		return nil, err
	}
	opts, err := imagebuild.DefaultOptions(root)
	if err != nil {
		return nil, err
	}
	var paths []string
	for _, s := range specs {
		img, err := imagebuild.Build(s, opts)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Ref, err)
		}
		path := imagePath(s.Ref.String())
		if err := imagebuild.WriteArchive(path, s.Ref, img); err != nil {
			return nil, fmt.Errorf("image %s: %w", s.Ref, err)
		}
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		logf("image %s %s", s.Ref, d)
		paths = append(paths, path)
	}
	return paths, nil
}
