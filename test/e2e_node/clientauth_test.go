package e2enode_test

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/test/framework/admissionauth"
	"github.com/dynamo-power/gpu-power/test/framework/realnode"
)

// TestWebhookTakesOnlyTheAPIServer: every replica runs with
// --client-ca-file, and its port refuses, in the TLS handshake, a caller
// without a client certificate or with one from another CA, while the API
// server's certificate gets through (every other test's admissions show
// that the API server presents it).
func TestWebhookTakesOnlyTheAPIServer(t *testing.T) {
	install(t)
	webhookTakesOnlyTheAPIServer(t)
}

// webhookTakesOnlyTheAPIServer checks every webhook replica running now.
func webhookTakesOnlyTheAPIServer(t *testing.T) {
	t.Helper()
	auth := realnode.APIServerAuth()
	apiserver, err := tls.LoadX509KeyPair(auth.Cert, auth.Key)
	if err != nil {
		t.Fatal(err)
	}
	other, err := admissionauth.OtherCA()
	if err != nil {
		t.Fatal(err)
	}
	pods, err := cluster.Client.CoreV1().Pods("dynamo-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app=power-webhook"})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) == 0 {
		t.Fatal("no webhook pods")
	}
	for _, p := range pods.Items {
		if args := p.Spec.Containers[0].Args; !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--client-ca-file=") }) {
			t.Errorf("%s runs without --client-ca-file: %v", p.Name, args)
		}
		for name, certs := range map[string][]tls.Certificate{"no client certificate": nil, "another CA": {other}} {
			if status, err := post(p.Status.PodIP, certs...); err == nil {
				t.Errorf("%s, %s: answered %s; want the TLS handshake refused", p.Name, name, status)
			}
		}
		if status, err := post(p.Status.PodIP, apiserver); err != nil {
			t.Errorf("%s, the API server's certificate: %v; want an answer", p.Name, err)
		} else {
			t.Logf("%s, the API server's certificate: %s", p.Name, status)
		}
	}
}

// post sends a review to a webhook replica's port with the given client
// certificates, and returns the answer's status.
func post(ip string, certs ...tls.Certificate) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, Certificates: certs, //nolint:gosec // the webhook's check of its caller is under test
	}}}
	resp, err := c.Post("https://"+net.JoinHostPort(ip, "9443")+"/validate-pods", "application/json", strings.NewReader(`{}`))
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Status, nil
}
