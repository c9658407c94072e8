package policy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
)

// StampKey signs the stamps the webhook sets and lets the agent tell them
// from stamps anyone else typed: a pod created while the webhook
// configurations were away (break-glass, an uninstall, before the install)
// can carry limit = stamp, but not a signature. Nil: stamps are not signed
// (and not checked).
type StampKey []byte

// NewStampKey derives the key from secret material (the private key of a
// Certificate that cert-manager keeps and never rotates), so the webhook and
// the agent, given the same file, hold the same key.
func NewStampKey(material []byte) StampKey {
	sum := sha256.Sum256(append([]byte("dynamo.nvidia.com/gpu-power-stamp/v1\x00"), material...))
	return StampKey(sum[:])
}

// Sign is the signature of a limit admitted in a namespace. It binds the
// namespace (a signature cannot move to another tenant's pods) and the limit;
// not the pod's name or UID, which a mutating webhook may not know yet.
func (k StampKey) Sign(namespace, limit string) string {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(namespace))
	m.Write([]byte{0})
	m.Write([]byte(limit))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Verify reports whether sig is the signature of limit in namespace.
func (k StampKey) Verify(namespace, limit, sig string) bool {
	want := k.Sign(namespace, limit)
	return len(sig) == len(want) && hmac.Equal([]byte(sig), []byte(want))
}
