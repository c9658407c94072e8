package kubetest

import (
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
)

// APIServer stands in for the API server, over TLS: client-go sends a
// kubeconfig's token to no other. The agent's client of it is built from a
// kubeconfig, as the agent builds it.
func APIServer(t *testing.T, h http.HandlerFunc) (*kube.Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	k, err := kube.New(Kubeconfig(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	return k, srv
}

// Kubeconfig writes a kubeconfig for srv, with the token "agent-token".
func Kubeconfig(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: agent, user: {token: agent-token}}]
contexts: [{name: test, context: {cluster: test, user: agent}}]
current-context: test
`, srv.URL, ca)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteStatus answers as the API server answers a failed request: a Status
// with the code and its usual reason.
func WriteStatus(w http.ResponseWriter, code int) {
	s := apierrors.NewGenericServerResponse(code, "create", schema.GroupResource{}, "", "", 0, false).ErrStatus
	s.Kind, s.APIVersion = "Status", "v1"
	WriteJSON(w, code, s)
}

// WriteJSON answers with v as JSON and the status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
