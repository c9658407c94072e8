package endpoints

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/internal/testlog"
	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

func TestProbes(t *testing.T) {
	notReconciled := errors.New("no full reconcile has succeeded yet")
	for _, tc := range []struct {
		name     string
		ready    error
		path     string
		wantCode int
		wantBody string
	}{
		{"liveness", nil, "/healthz", http.StatusOK, "ok"},
		{"liveness holds while not ready: kubelet must not restart the agent for it", notReconciled, "/healthz", http.StatusOK, "ok"},
		{"liveness check by name", nil, "/healthz/ping", http.StatusOK, "ok"},
		{"ready", nil, "/readyz", http.StatusOK, "ok"},
		{"ready, trailing slash", nil, "/readyz/", http.StatusOK, "ok"},
		{"ready, verbose", nil, "/readyz?verbose", http.StatusOK, "[+]reconciled ok"},
		{"not ready: the reason is withheld", notReconciled, "/readyz", http.StatusInternalServerError, "[-]reconciled failed: reason withheld"},
		{"not ready, check by name: the reason", notReconciled, "/readyz/reconciled", http.StatusInternalServerError, notReconciled.Error()},
		{"unknown check", nil, "/readyz/nvml", http.StatusNotFound, "404 page not found"},
		{"no metrics on the probe port", nil, "/metrics", http.StatusNotFound, "404 page not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := ProbesHandler(func(*http.Request) error { return tc.ready })
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if w.Code != tc.wantCode || !strings.Contains(w.Body.String(), tc.wantBody) {
				t.Errorf("GET %s: %d %q, want %d with %q", tc.path, w.Code, w.Body, tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestMetricsHandler(t *testing.T) {
	h := MetricsHandler(NewRegistry())
	for _, tc := range []struct {
		path     string
		wantCode int
		wantBody string
	}{
		{"/metrics", http.StatusOK, "go_goroutines"},
		{"/healthz", http.StatusNotFound, "404 page not found"},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if w.Code != tc.wantCode || !strings.Contains(w.Body.String(), tc.wantBody) {
			t.Errorf("GET %s: %d, want %d with %q", tc.path, w.Code, tc.wantCode, tc.wantBody)
		}
	}
}

func TestServe(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })
	for _, tc := range []struct {
		name, addr, wantErr string
	}{
		{name: "empty address: disabled", addr: ""},
		{name: "0: disabled", addr: "0"},
		{name: "port taken: the agent stops at start", addr: taken.Addr().String(), wantErr: "listen for probes on " + taken.Addr().String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs := testlog.New(t)
			err := Serve(t.Context(), logs.Logger, "probes", tc.addr, http.NotFoundHandler())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("serve: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(logs.Find("Serving")) != 0 {
				t.Errorf("serve: %v, logged %s; want nothing served", err, logs.All())
			}
		})
	}
}

func TestServeUntilContextEnds(t *testing.T) {
	logs := testlog.New(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if err := Serve(ctx, logs.Logger, "probes", "127.0.0.1:0", ProbesHandler(func(*http.Request) error { return nil })); err != nil {
		t.Fatal(err)
	}
	serving := logs.Find("Serving")
	if len(serving) != 1 || serving[0]["endpoint"] != "probes" {
		t.Fatalf("logged %s, want one Serving line for probes", logs.All())
	}
	healthz := "http://" + serving[0]["address"].(string) + "/healthz"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() (string, error) {
		resp, err := client.Get(healthz)
		if err != nil {
			return "", err
		}
		defer func() { _ = resp.Body.Close() }()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}
	if body, err := get(); err != nil || body != "ok" {
		t.Fatalf("GET %s: %q, %v", healthz, body, err)
	}
	cancel()
	poll.Eventually(t, 10*time.Second, healthz+" to stop being served once ctx ended", func() (bool, string) {
		_, err := get()
		return err != nil, "still served"
	})
}
