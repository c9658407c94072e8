// Package e2e_test runs the whole system in the sandbox (test/framework/sandbox): both
// manifest folders applied unchanged with kubectl to a real API server where
// cert-manager's own controllers and cainjector run, the webhook binary
// serving the certificate cert-manager issued, the agent binary on simulated
// H100s. It checks what an operator checks after `kubectl apply`, then plays
// the planner scenario of `make demo`, step by step.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/test/framework/envtestenv"
	"github.com/dynamo-power/gpu-power/test/framework/sandbox"
	"github.com/dynamo-power/gpu-power/test/framework/testdeploy"
)

var sb *sandbox.Sandbox

func TestMain(m *testing.M) { envtestenv.Main(m, "e2e", setup) }

func setup(m *testing.M) (code int, err error) {
	dir, err := os.MkdirTemp("", "power-e2e-")
	if err != nil {
		return 0, err
	}
	var progress bytes.Buffer
	stopCapture, err := captureStderr()
	if err != nil {
		return 0, err
	}
	sb, err = sandbox.Start(context.Background(), sandbox.Options{Dir: dir, Progress: &progress})
	printed := stopCapture()
	if err != nil {
		return 0, fmt.Errorf("%w\n%s(files kept in %s)", err, progress.String(), dir)
	}
	// What `make up` shows a newcomer: a healthy start prints no error line
	// (cert-manager's, while the certificate is being issued, go to its log).
	if errs := errorLines(progress.String() + printed); len(errs) > 0 {
		return 0, fmt.Errorf("a healthy start printed error lines:\n%s\n(files kept in %s)", strings.Join(errs, "\n"), dir)
	}
	code = m.Run()
	if err := sb.Stop(); err != nil {
		return code, err
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "e2e: logs of both binaries and cert-manager kept in %s\n", dir)
		return code, nil
	}
	return code, os.RemoveAll(dir)
}

// TestInstall checks what `kubectl apply` of both folders produced:
// cert-manager issued the serving certificate from the CA chain (a leaf, not
// self-signed) for the Service's name, and the shipped example budget applies.
func TestInstall(t *testing.T) {
	var secret corev1.Secret
	if err := sb.Client.Get(t.Context(), types.NamespacedName{Namespace: sandbox.Namespace, Name: sandbox.SecretName}, &secret); err != nil {
		t.Fatal(err)
	}
	leaf, err := sandbox.ParseCertificate(secret.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		t.Fatal("ca.crt holds no certificate")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "power-webhook.dynamo-system.svc"}); err != nil {
		t.Errorf("the serving certificate does not verify against the CA for the Service's name: %v", err)
	}
	if leaf.IsCA || bytes.Equal(leaf.RawIssuer, leaf.RawSubject) {
		t.Error("the serving certificate must be a leaf issued by the CA, not self-signed")
	}
	served, err := sb.ServedCertificate(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !served.Equal(leaf) {
		t.Errorf("the webhook serves serial %s; the Secret holds %s", served.SerialNumber, leaf.SerialNumber)
	}

	example, err := testdeploy.ExampleBudget()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := sb.Kubectl(t.Context(), string(example), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(out, "gpupowerbudget.power.dynamo.nvidia.com/example") {
		t.Errorf("kubectl apply of the example budget: %s", out)
	}
	out, err := sb.Kubectl(t.Context(), "", "get", "gpupowerbudgets", "example")
	if err != nil || !strings.Contains(out, "TOTAL") {
		t.Errorf("kubectl get gpupowerbudgets example: %v\n%s", err, out)
	}
	if _, err := sb.Kubectl(t.Context(), "", "delete", "gpupowerbudgets", "example"); err != nil {
		t.Error(err)
	}
}

// TestPlannerScenario plays `make demo`'s scenario, one subtest per step;
// a step builds on the ones before, so the first failure ends the test.
func TestPlannerScenario(t *testing.T) {
	steps := (&sandbox.Planner{S: sb}).Steps()
	for i, st := range steps {
		ok := t.Run(st.Title, func(t *testing.T) {
			p := &sandbox.Planner{S: sb, Out: logWriter{t}}
			if err := p.Steps()[i].Run(t.Context()); err != nil {
				t.Fatal(err)
			}
			if err := sb.Err(); err != nil {
				t.Fatal(err)
			}
		})
		if !ok {
			t.Fatalf("step %d failed; the later steps depend on it", i+1)
		}
	}
}

// logWriter sends the planner's narrative to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// captureStderr sends what the process writes to stderr into a pipe, still
// copied to the real stderr, until the returned function stops it and
// returns everything written.
func captureStderr() (stop func() string, err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	stderr := os.Stderr
	os.Stderr = w
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.MultiWriter(&out, stderr), r)
		close(done)
	}()
	return func() string {
		os.Stderr = stderr
		_ = w.Close()
		<-done
		return out.String()
	}, nil
}

// errorLines are the lines in klog's error format ("E1201 13:44:02...") or
// that start with "error".
func errorLines(s string) []string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if klogError.MatchString(line) || strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "error") {
			out = append(out, line)
		}
	}
	return out
}

var klogError = regexp.MustCompile(`^E[0-9]{4} `)
