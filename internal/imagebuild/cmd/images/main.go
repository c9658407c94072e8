// Command images is `make images`: it builds power-webhook and power-agent
// and their images without Docker (internal/imagebuild), writes each as
// <out>/<name>.tar (an OCI image layout and a docker archive in one), and
// with --push writes both to --repo and prints each by digest, to pin. Run
// it from the module root.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/dynamo-power/gpu-power/internal/imagebuild"
)

func main() {
	out := flag.String("out", "bin/images", "Folder for the image archives (<name>.tar).")
	binDir := flag.String("bin-dir", "bin", "Folder for the binaries the images carry.")
	repo := flag.String("repo", imagebuild.DefaultRepo, "Repository the images are named in (and pushed to): <repo>/power-webhook, <repo>/power-agent.")
	tag := flag.String("tag", imagebuild.DefaultTag, "Version tag of both images; latest is refused.")
	push := flag.Bool("push", false, "Push both images to --repo (credentials from the Docker config, as `docker login` or `crane auth login` leave them).")
	flag.Parse()
	log.SetFlags(0)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	results, err := imagebuild.Make(ctx, imagebuild.Config{Root: ".", BinDir: *binDir, Out: *out, Repo: *repo, Tag: *tag, Push: *push}, log.Printf)
	stop()
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range results {
		if *push {
			fmt.Println(r.Pushed)
		} else {
			fmt.Printf("%s %s@%s\n", r.Archive, r.Ref, r.Digest)
		}
	}
}
