package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"strings"
)

// ParseCertificate parses the first PEM certificate in data.
func ParseCertificate(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ServedCertificate returns the certificate the webhook presents now, as the
// API server sees it in the TLS handshake (with the API server's client
// certificate, so the webhook takes the connection).
func (s *Sandbox) ServedCertificate(ctx context.Context) (*x509.Certificate, error) {
	client, err := tls.LoadX509KeyPair(s.APIServerAuth.Cert, s.APIServerAuth.Key)
	if err != nil {
		return nil, err
	}
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{client}}} //nolint:gosec // reads the certificate, trusts nothing
	conn, err := d.DialContext(ctx, "tcp", strings.TrimPrefix(s.WebhookURL, "https://"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s presented no certificate", s.WebhookURL)
	}
	return certs[0], nil
}
