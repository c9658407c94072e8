package agent

import (
	"strings"
	"testing"

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
// enough: a pod created while the webhook was away (its author typed both)
// caps nothing and is told once; the webhook's signed stamp caps as before.
func TestUnsignedStampIsNotEnforced(t *testing.T) {
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	n := newNode(t)
	n.enforcer.StampKey = key
	typed := n.runIn("llm", "typed-by-hand", "200", gpu[0])
	copied := n.runIn("other-tenant", "copied-signature", "200", gpu[1])
	copied.Annotations[policy.AnnotationPowerLimitSignature] = key.Sign("llm", "200") // valid, but for another namespace
	signed := n.runIn("llm", "admitted", "250", gpu[2])
	signed.Annotations[policy.AnnotationPowerLimitSignature] = key.Sign("llm", "250")
	for range 3 {
		n.reconcile()
	}
	for i, want := range []int64{700, 700, 250} {
		if n.limitW(gpu[i]) != want {
			t.Errorf("GPU %d at %d W; want %d", i, n.limitW(gpu[i]), want)
		}
	}
	var told []string
	for _, e := range n.drainEvents() {
		if strings.Contains(e, " "+ReasonNotValidated+" ") && strings.Contains(e, "no valid signature") {
			told = append(told, e)
		}
	}
	if len(told) != 2 {
		t.Errorf("events %q; want one %s for each of %s and %s", told, ReasonNotValidated, typed.Name, copied.Name)
	}
}
