package webhook_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	resourcev1 "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The resourceclaim controller adopts a claim for a pod's template entry by
// its controller owner's UID and the pod-claim-name annotation alone, and
// the scheduler takes it for the pod by that UID: a claim whose owner names
// the pod's UID under another name (no pod, or another pod) is refused, as
// is the one naming it right that gives it more than it was admitted for.
func TestClaimOwnedByNoSuchPodIsRefused(t *testing.T) {
	createUntilCleanup(t, nvidiaGPUClass(nil))
	draNode(t, "dra-owner-r2")
	ns := namespaceUntilCleanup(t, "dra-owner-r2", map[string]string{"resource.kubernetes.io/admin-access": "true"})
	claimOf := func(name string, gpus int64) *resourcev1.ResourceClaim { return gpuClaim(ns, name, gpus) }
	limited := limitedTemplatePod(t, ns)
	if err := k8s.Create(t.Context(), claimPod(ns, "other", "one-gpu").Obj()); err != nil {
		t.Fatal(err)
	}
	made := func(name, ownerName string, gpus int64, admin bool) *resourcev1.ResourceClaim {
		c := claimOf(name, gpus)
		c.Annotations = map[string]string{"resource.kubernetes.io/pod-claim-name": "gpus"}
		c.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: ownerName, UID: limited.UID, Controller: ptr.To(true)}}
		if admin {
			c.Spec.Devices.Requests[0].Exactly.AdminAccess = ptr.To(true)
		}
		return c
	}
	// As the webhook sees it with the right name: refused.
	if err := k8s.Create(t.Context(), made("right-name", "limited", 2, false)); !apierrors.IsForbidden(err) {
		t.Fatalf("the pod's claim with 2 GPUs, owner named right: %v; want refused", err)
	}
	for _, tc := range []struct{ claim, owner string }{
		{"no-such-pod", "no-such-pod"}, // the UID of "limited" under a name no pod has
		{"another-pod", "other"},       // ... under another pod's name
	} {
		c := made(tc.claim, tc.owner, 2, true)
		err := k8s.Create(t.Context(), c)
		if err == nil {
			t.Cleanup(func() { _ = k8s.Delete(context.Background(), c) })
			t.Errorf("claim with admin access to 2 GPUs, controller owner UID %s (pod %q) named %q: created; "+
				"the resourceclaim controller adopts it for pod %q's claim by UID, and its 300 W limit reaches GPUs it was not admitted for",
				limited.UID, "limited", tc.owner, "limited")
		} else if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), fmt.Sprintf("names pod %q (uid %s) its controller, and no such pod exists", tc.owner, limited.UID)) {
			t.Errorf("%s: %v; want refused for naming no such pod", tc.claim, err)
		}
	}
}
