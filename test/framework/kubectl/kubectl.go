// Package kubectl is the one way tests and harnesses run kubectl (and other
// CLIs that take --kubeconfig, such as helm): Runner, a binary with a
// kubeconfig and optional extra environment, and its Run method. Finding the
// binary is left to the level: envtestenv.Kubectl for envtest and the
// sandbox, realnode's K8sBin for the real node.
package kubectl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Runner runs one CLI binary against one cluster.
type Runner struct {
	// Bin is the binary's path.
	Bin string
	// Kubeconfig is passed as --kubeconfig before the arguments.
	Kubeconfig string
	// Env is added to this process's environment (helm's HELM_*_HOME).
	Env []string
}

// Run runs the binary with stdin and args and returns its combined output.
// A failure's error carries the command line and the output, so that a
// caller can report it as it is; the output is returned either way, for
// callers that check what a refusal said.
func (r Runner) Run(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, r.Bin, append([]string{"--kubeconfig", r.Kubeconfig}, args...)...)
	if len(r.Env) > 0 {
		cmd.Env = append(os.Environ(), r.Env...)
	}
	var out bytes.Buffer
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(r.Bin), strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}
