package webhook_test

import (
	"crypto/tls"
	"net"
	"strconv"
	"testing"
)

// TestServingTLS checks what the webhook server offers the API server:
// TLS 1.2 or newer, and HTTP/1.1 only (HTTP/2 is off).
func TestServingTLS(t *testing.T) {
	addr := net.JoinHostPort(webhooks.wio.LocalServingHost, strconv.Itoa(webhooks.wio.LocalServingPort))
	old, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MaxVersion: tls.VersionTLS11}) //nolint:gosec // the point is an old version
	if err == nil {
		_ = old.Close()
		t.Error("the webhook server accepted TLS 1.1")
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec // the server, not its certificate, is under test
	if err != nil {
		t.Fatalf("TLS 1.2+ handshake: %v", err)
	}
	defer func() { _ = conn.Close() }()
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Error("the webhook server negotiated HTTP/2; it must be off")
	}
	if v := conn.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("negotiated TLS version %x; want 1.2 or newer", v)
	}
}
