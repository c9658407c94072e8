package policy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// StampKey signs the stamps the webhook sets and lets the agent tell them
// from stamps anyone else typed: a pod created while the webhook
// configurations were away (break-glass, an uninstall, before the install)
// can carry limit = stamp, but not a signature. Nil: stamps are not signed
// (and not checked).
type StampKey []byte

// StampWindow is how far the time in a creation's signature may lie from the
// pod's creationTimestamp, which the API server sets right after the mutating
// webhooks: one webhook timeout (30 s at most). A signature copied from
// another pod verifies only on a pod created within it.
const StampWindow = 30 * time.Second

// NewStampKey derives the key from secret material (the private key of a
// Certificate that cert-manager keeps and never rotates), so the webhook and
// the agent, given the same file, hold the same key.
func NewStampKey(material []byte) StampKey {
	sum := sha256.Sum256(append([]byte("dynamo.nvidia.com/gpu-power-stamp/v1\x00"), material...))
	return StampKey(sum[:])
}

// The two forms of a signature. A mutating webhook does not know a new pod's
// UID yet, so a creation's signature binds the time it was made, which the
// agent holds against the pod's creationTimestamp ("c.<unix>.<mac>"); an
// update's binds the pod's UID ("u.<mac>"). Both bind namespace and limit.
const (
	createdForm = "c."
	updatedForm = "u."
)

// SignCreate is the signature of a limit admitted at a pod's creation.
func (k StampKey) SignCreate(namespace, limit string, at time.Time) string {
	unix := strconv.FormatInt(at.Unix(), 10)
	return createdForm + unix + "." + k.mac("c", namespace, limit, unix)
}

// SignUpdate is the signature of a limit admitted on an update of pod uid.
func (k StampKey) SignUpdate(namespace string, uid types.UID, limit string) string {
	return updatedForm + k.mac("u", namespace, limit, string(uid))
}

// Verify reports whether sig is the webhook's signature of limit on the pod
// of namespace, uid and creationTimestamp created.
func (k StampKey) Verify(namespace string, uid types.UID, created time.Time, limit, sig string) bool {
	switch {
	case strings.HasPrefix(sig, updatedForm):
		want := k.SignUpdate(namespace, uid, limit)
		return len(sig) == len(want) && hmac.Equal([]byte(sig), []byte(want))
	case strings.HasPrefix(sig, createdForm):
		return k.verifyCreated("c", namespace, limit, created, sig)
	}
	return false
}

// SignClaims is the signature of the claims' GPU counts (AnnotationClaimGPUs)
// admitted at a pod's creation, the only time they are set.
func (k StampKey) SignClaims(namespace, counts string, at time.Time) string {
	unix := strconv.FormatInt(at.Unix(), 10)
	return createdForm + unix + "." + k.mac("claims", namespace, counts, unix)
}

// verifyCreated checks a creation's signature of value, made for purpose,
// against the pod's creationTimestamp.
func (k StampKey) verifyCreated(purpose, namespace, value string, created time.Time, sig string) bool {
	unix, _, ok := strings.Cut(strings.TrimPrefix(sig, createdForm), ".")
	at, err := strconv.ParseInt(unix, 10, 64)
	if !strings.HasPrefix(sig, createdForm) || !ok || err != nil || unix != strconv.FormatInt(at, 10) {
		return false
	}
	if d := created.Sub(time.Unix(at, 0)); d < -StampWindow || d > StampWindow {
		return false
	}
	want := createdForm + unix + "." + k.mac(purpose, namespace, value, unix)
	return len(sig) == len(want) && hmac.Equal([]byte(sig), []byte(want))
}

func (k StampKey) mac(parts ...string) string {
	macs := macsOf(k)
	m := macs.pool.Get().(hash.Hash)
	defer macs.pool.Put(m)
	m.Reset()
	var msg []byte
	for _, p := range parts {
		msg = append(append(msg, p...), 0)
	}
	m.Write(msg)
	var sum [sha256.Size]byte
	return base64.RawURLEncoding.EncodeToString(m.Sum(sum[:0]))
}

// keyedMACs are HMACs of one key, kept between uses: a new one costs the
// key's setup and a dozen allocations, and every admission and every GPU
// pod event signs or verifies a stamp. A process holds one key, so the
// last key's are kept.
type keyedMACs struct {
	key  string
	pool sync.Pool
}

var lastMACs atomic.Pointer[keyedMACs]

func macsOf(k StampKey) *keyedMACs {
	if m := lastMACs.Load(); m != nil && m.key == string(k) {
		return m
	}
	key := slices.Clone(k)
	m := &keyedMACs{key: string(k), pool: sync.Pool{New: func() any { return hmac.New(sha256.New, key) }}}
	lastMACs.Store(m)
	return m
}

// Validated reports whether a pod's limit is the one the webhook admitted:
// its stamp equals the limit and, when stamps are signed (k is set), carries
// the webhook's signature. A limit typed where the webhook never looked (a
// namespace it skips, a pod created while it was away) is not, and the
// agent does not enforce it: such a pod draws what its GPUs' default allows.
func (k StampKey) Validated(pod *corev1.Pod) bool {
	limit, ok := pod.Annotations[AnnotationPowerLimit]
	if !ok || pod.Annotations[AnnotationPowerLimitValidated] != limit {
		return false
	}
	return k == nil || k.Verify(pod.Namespace, pod.UID, pod.CreationTimestamp.Time, limit, pod.Annotations[AnnotationPowerLimitSignature])
}

// ClaimsSigned reports whether a pod's AnnotationClaimGPUs is the one the
// webhook set: when stamps are signed (k is set), it carries the webhook's
// signature. Counts typed where the webhook never looked are not, and
// budgets do not charge by them.
func (k StampKey) ClaimsSigned(pod *corev1.Pod) bool {
	counts, ok := pod.Annotations[AnnotationClaimGPUs]
	return ok && (k == nil || k.verifyCreated("claims", pod.Namespace, counts, pod.CreationTimestamp.Time, pod.Annotations[AnnotationClaimGPUsSignature]))
}
