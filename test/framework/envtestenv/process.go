package envtestenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"
)

// Main runs a test package whose tests share one environment: setup starts
// it, runs m and tears it down; a setup error is reported and fails the run.
func Main(m *testing.M, what string, setup func(*testing.M) (int, error)) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s setup: %v\n", what, err)
		os.Exit(1)
	}
	os.Exit(code)
}

// Ready reports whether a binary's /readyz on probeAddr passes.
func Ready(probeAddr string) (bool, string) {
	resp, err := http.Get("http://" + probeAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK, resp.Status
}

// FreeAddr returns a loopback address with a port nothing listens on now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String(), nil
}
