// Package admissionauth gives a test kube-apiserver a client certificate to
// call the power webhook with, as docs/install.md ("Authenticating the API
// server") sets one up on a real control plane: a CA of its own (the
// webhook's --client-ca-file), a client certificate it signs, and the
// AdmissionConfiguration (--admission-control-config-file) whose kubeconfig
// makes both webhook admission plugins present it to the webhook's hosts
// (Write, Files; Paths names them in a folder). OtherCA and Issue make the
// certificates of callers that are not the API server, for the attacks.
package admissionauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ClientName is the API server's identity in its client certificate: the
// webhook's --client-name.
const ClientName = "kube-apiserver-power-webhook-client"

// ServiceHost is the kubeconfig user name the API server looks up for a
// webhook behind the Service power-webhook in dynamo-system, port 443.
const ServiceHost = "power-webhook.dynamo-system.svc"

// Files are what Write made.
type Files struct {
	// CA is the client CA's certificate: the webhook's --client-ca-file.
	CA string
	// Cert and Key are the API server's client certificate and key.
	Cert, Key string
	// AdmissionConfig is kube-apiserver's --admission-control-config-file;
	// Kubeconfig the file it names for both webhook admission plugins.
	AdmissionConfig, Kubeconfig string
}

// Write makes a fresh client CA and a client certificate for ClientName in
// dir, and the API server configuration that presents it to each of hosts:
// kubeconfig user names, a Service's DNS name (ServiceHost) or the host:port
// of a webhook URL.
func Write(dir string, hosts ...string) (Files, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, err
	}
	f := Paths(dir)
	ca, caKey, err := newCA("power-webhook-client-ca")
	if err != nil {
		return Files{}, err
	}
	cert, err := Issue(ca, caKey, ClientName)
	if err != nil {
		return Files{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return Files{}, err
	}
	var users strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&users, "- name: %q\n  user:\n    client-certificate: %s\n    client-key: %s\n", h, f.Cert, f.Key)
	}
	plugin := func(name string) string {
		return fmt.Sprintf("- name: %s\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: %s\n", name, f.Kubeconfig)
	}
	for path, data := range map[string][]byte{
		f.CA:              pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}),
		f.Cert:            pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}),
		f.Key:             pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		f.Kubeconfig:      []byte("apiVersion: v1\nkind: Config\nusers:\n" + users.String()),
		f.AdmissionConfig: []byte("apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n" + plugin("ValidatingAdmissionWebhook") + plugin("MutatingAdmissionWebhook")),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}

// Paths are the files Write makes in dir.
func Paths(dir string) Files {
	return Files{
		CA:              filepath.Join(dir, "webhook-client-ca.crt"),
		Cert:            filepath.Join(dir, "apiserver-webhook-client.crt"),
		Key:             filepath.Join(dir, "apiserver-webhook-client.key"),
		AdmissionConfig: filepath.Join(dir, "admission-config.yaml"),
		Kubeconfig:      filepath.Join(dir, "admission-kubeconfig.yaml"),
	}
}

// OtherCA is a client certificate for ClientName from a CA of its own, which
// no webhook trusts.
func OtherCA() (tls.Certificate, error) {
	ca, key, err := newCA("another-ca")
	if err != nil {
		return tls.Certificate{}, err
	}
	return Issue(ca, key, ClientName)
}

// Issue signs a client certificate for name.
func Issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client certificate %s: %w", name, err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func newCA(name string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", name, err)
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}
