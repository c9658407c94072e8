package agent

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// TestStampWhereTheWebhookNeverLooksIsNotEnforced: the webhook skips
// policy.SkippedNamespaces, so a limit and stamp typed by hand on a pod
// there caps nothing; the pod is told once.
func TestStampWhereTheWebhookNeverLooksIsNotEnforced(t *testing.T) {
	for i, ns := range policy.SkippedNamespaces {
		t.Run(ns+": not capped, told once", func(t *testing.T) {
			n := newNode(t)
			n.runIn(ns, "typed-by-hand", "200", gpu[i]) // limit == stamp, both typed
			for range 3 {
				n.reconcile()
			}
			if n.writes(gpu[i]) != 0 || n.limitW(gpu[i]) != 700 {
				t.Errorf("GPU %d at %d W after %d writes; want it untouched at 700 W", i, n.limitW(gpu[i]), n.writes(gpu[i]))
			}
			var told []string
			for _, e := range n.drainEvents() {
				if strings.Contains(e, " "+ReasonNotValidated+" ") {
					told = append(told, e)
				}
			}
			if len(told) != 1 || !strings.HasPrefix(told[0], "Warning ") || !strings.Contains(told[0], "does not intercept namespace "+ns) {
				t.Errorf("events %q; want one Warning %s naming namespace %s", told, ReasonNotValidated, ns)
			}
		})
	}
	t.Run("a namespace the webhook intercepts: capped", func(t *testing.T) {
		n := newNode(t)
		n.runIn("llm", "admitted", "200", gpu[0])
		if n.reconcile(); n.limitW(gpu[0]) != 200 {
			t.Errorf("GPU 0 at %d W; want 200", n.limitW(gpu[0]))
		}
	})
	t.Run("shared with an admitted pod: only the admitted limit counts", func(t *testing.T) {
		n := newNode(t)
		n.run("admitted", "300", gpu[1])
		n.runIn("kube-system", "typed-by-hand", "200", gpu[1])
		if r := n.reconcile()[gpu[1]]; n.limitW(gpu[1]) != 300 || r.Conflict {
			t.Errorf("GPU 1 at %d W (conflict %v); want 300, the admitted pod's", n.limitW(gpu[1]), r.Conflict)
		}
	})
	t.Run("a configured list: the default namespaces are enforced again", func(t *testing.T) {
		n := newNode(t)
		n.enforcer.SkippedNamespaces = nil // --webhook-skipped-namespaces=""
		n.runIn("kube-system", "admitted", "200", gpu[0])
		if n.reconcile(); n.limitW(gpu[0]) != 200 {
			t.Errorf("GPU 0 at %d W; want 200", n.limitW(gpu[0]))
		}
	})
}

// TestUnsignedStampIsNotEnforced: with a stamp key, limit = stamp is not
// enough: a pod created while the webhook was away (its author typed both, or
// copied a signature from another pod) caps nothing and is told once; the
// webhook's signatures cap as before.
func TestUnsignedStampIsNotEnforced(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	created := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(p *corev1.Pod, t time.Time, sig string) {
		p.CreationTimestamp = metav1.NewTime(t)
		if sig != "" {
			p.Annotations[policy.AnnotationPowerLimitSignature] = sig
		}
	}
	donor := key.SignCreate("llm", "200", created)
	for _, tc := range []struct {
		name    string
		ns      string
		created time.Time
		sig     func(p *corev1.Pod) string
		capped  bool
	}{
		{"typed by hand", "llm", created, func(*corev1.Pod) string { return "" }, false},
		{"signed at its creation", "llm", created.Add(2 * time.Second), func(*corev1.Pod) string { return donor }, true},
		{"creation signature copied onto a later pod", "llm", created.Add(time.Hour), func(*corev1.Pod) string { return donor }, false},
		{"creation signature copied into another namespace", "other-tenant", created, func(*corev1.Pod) string { return donor }, false},
		{"signed on an update of this pod", "llm", created.Add(time.Hour), func(p *corev1.Pod) string { return key.SignUpdate("llm", p.UID, "200") }, true},
		{"update signature copied from another pod", "llm", created, func(*corev1.Pod) string { return key.SignUpdate("llm", "another-pod", "200") }, false},
		{"another key's signature", "llm", created, func(*corev1.Pod) string {
			return policy.NewStampKey([]byte("another cluster's key material, 32+ bytes")).SignCreate("llm", "200", created)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.enforcer.StampKey = key
			p := n.runIn(tc.ns, "p", "200", gpu[0])
			at(p, tc.created, tc.sig(p))
			n.reconcile()
			want := int64(700)
			if tc.capped {
				want = 200
			}
			if got := n.limitW(gpu[0]); got != want {
				t.Errorf("GPU at %d W; want %d", got, want)
			}
			var told int
			for _, e := range n.drainEvents() {
				if strings.Contains(e, " "+ReasonNotValidated+" ") && strings.Contains(e, "no valid signature") {
					told++
				}
			}
			if tc.capped == (told > 0) {
				t.Errorf("%d %s Events on a pod capped %v", told, ReasonNotValidated, tc.capped)
			}
		})
	}
}
