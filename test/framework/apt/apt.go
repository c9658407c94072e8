// Package apt installs the Debian packages a test level needs on a machine
// that lacks them (Install): the real node's containerd, runc and CNI
// plugins, the monitoring tests' Prometheus. It needs root and the apt
// mirror, and says which packages it could not install and why.
package apt

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Install runs apt-get update and installs packages, without recommends or
// prompts; what names what they are for, in the error and the log.
func Install(logf func(string, ...any), what string, packages ...string) error {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return errors.New(what + " are missing and there is no apt-get to install them")
	}
	logf("installing %s with apt-get...", strings.Join(packages, ", "))
	for _, args := range [][]string{
		{"update", "-q"},
		append([]string{"install", "-y", "-q", "--no-install-recommends"}, packages...),
	} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}
