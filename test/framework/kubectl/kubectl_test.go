package kubectl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCLI writes a shell script that prints its arguments and stdin, and
// fails when asked to.
func fakeCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kubectl")
	script := "#!/bin/sh\necho \"args: $* env: $EXTRA\"\ncat\ncase \"$*\" in *fail*) exit 3;; esac\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestRun(t *testing.T) {
	r := Runner{Bin: fakeCLI(t), Kubeconfig: "/k.conf", Env: []string{"EXTRA=x"}}
	out, err := r.Run(t.Context(), "manifest\n", "apply", "-f", "-")
	if err != nil || out != "args: --kubeconfig /k.conf apply -f - env: x\nmanifest\n" {
		t.Errorf("Run = %q, %v", out, err)
	}
	out, err = r.Run(t.Context(), "", "fail")
	if err == nil || !strings.HasPrefix(err.Error(), "kubectl fail: exit status 3\n") || !strings.Contains(err.Error(), out) || out == "" {
		t.Errorf("a failing command: %q, %v; want the command line and its output in the error", out, err)
	}
}
