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

	"github.com/dynamo-power/gpu-power/internal/hostfile"
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
	data, err := hostfile.Read(path, maxKeyFile)
	switch {
	case err != nil:
		return nil, fmt.Errorf("read stamp key: %w", err)
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
