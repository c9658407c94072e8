package stampkey_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dynamo-power/gpu-power/pkg/stampkey"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "tls.key")
	if err := os.WriteFile(key, []byte("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB...\n-----END EC PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := stampkey.Load(key)
	if err != nil || len(a) == 0 {
		t.Fatalf("Load = %v, %v", a, err)
	}
	b, _ := stampkey.Load(key)
	if a.SignUpdate("llm", "uid", "250") != b.SignUpdate("llm", "uid", "250") {
		t.Error("the same file gave two keys")
	}
	if k, err := stampkey.Load(""); k != nil || err != nil {
		t.Errorf("no file: %v, %v; want no key", k, err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "not a regular file",
		short:                         "too short",
		big:                           "larger than",
		fifo:                          "not a regular file",
	} {
		if _, err := stampkey.Load(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load(%s) = %v; want %q", path, err, want)
		}
	}
}

// TestLoadIsTheKeyNotItsEncoding: cert-manager may write the same private
// key as PKCS #1 or PKCS #8 (privateKey.encoding); both give one stamp key.
func TestLoadIsTheKeyNotItsEncoding(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var keys []string
	for name, block := range map[string]*pem.Block{"sec1": {Type: "EC PRIVATE KEY", Bytes: sec1}, "pkcs8": {Type: "PRIVATE KEY", Bytes: pkcs8}} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		key, err := stampkey.Load(p)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key.SignUpdate("llm", "uid", "250"))
	}
	if keys[0] != keys[1] {
		t.Error("the same private key in two encodings gave two stamp keys")
	}
}
