// Package stampkey loads the key the webhook signs stamps with and the agent
// verifies them with (policy.StampKey), from the same file in both: the
// private key of a Certificate that cert-manager keeps and never rotates
// (deploy/webhook/50-certificates.yaml), taken as the key and not its
// encoding, so a re-encoding by cert-manager changes nothing. It only reads
// that file.
package stampkey

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// maxKeyFile bounds the read: a PEM private key is a few hundred bytes.
const maxKeyFile = 64 << 10

// minKeyFile refuses a file too short to be key material.
const minKeyFile = 32

// Load reads the key file at path; "" means stamps are not signed (nil key).
func Load(path string) (policy.StampKey, error) {
	if path == "" {
		return nil, nil
	}
	// Non-blocking, so a FIFO at the path cannot hang the start; links are
	// followed: a Secret volume's files are links into its current version.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read stamp key: %w", err)
	}
	defer func() { _ = f.Close() }()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read stamp key %s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read stamp key %s: %w", path, err)
	case len(data) > maxKeyFile:
		return nil, fmt.Errorf("read stamp key %s: larger than %d bytes", path, maxKeyFile)
	case len(data) < minKeyFile:
		return nil, fmt.Errorf("read stamp key %s: %d bytes, too short for key material", path, len(data))
	}
	return policy.NewStampKey(canonical(data)), nil
}

// canonical is a PEM private key as PKCS #8 DER, so that the key is the same
// whichever encoding cert-manager writes it in (privateKey.encoding PKCS1 or
// PKCS8, or a re-encoding on renewal); other material is taken as it is.
func canonical(data []byte) []byte {
	block, _ := pem.Decode(data)
	if block == nil {
		return data
	}
	var key any
	var err error
	switch block.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return data
	}
	if err != nil {
		return data
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return data
	}
	return der
}
