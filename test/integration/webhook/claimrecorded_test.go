package webhook_test

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/resourceclaim"
	"k8s.io/utils/ptr"
)

// Once the resourceclaim controller has recorded a template claim's name in
// the pod's status, the scheduler and the controller take a claim of that
// name for the pod when its controller owner carries the pod's UID, whatever
// the owner's kind, apiVersion or name and with or without the
// pod-claim-name annotation: such a claim, made again while the pod waits,
// is held to the pod's admitted count.
func TestClaimSwappedUnderItsRecordedNameIsHeld(t *testing.T) {
	createUntilCleanup(t, nvidiaGPUClass(nil))
	draNode(t, "dra-owner-r3")
	ns := namespaceUntilCleanup(t, "dra-owner-r3", map[string]string{"resource.kubernetes.io/admin-access": "true"})
	pod := limitedTemplatePod(t, ns)
	// What the controller records after creating the pod's claim (the
	// claim itself since deleted while the pod waits).
	for i, tc := range []struct {
		name  string
		owner metav1.OwnerReference
		annot bool
	}{
		{"no-annotation", metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "limited"}, false},
		{"kind-lowercase", metav1.OwnerReference{APIVersion: "v1", Kind: "pod", Name: "limited"}, true},
		{"apiversion-group", metav1.OwnerReference{APIVersion: "core/v1", Kind: "Pod", Name: "limited"}, true},
		{"owner-name-decoy", metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: "decoy"}, false},
		{"kind-other", metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "Widget", Name: "w"}, false},
	} {
		claimName := "limited-gpus-r3" + string(rune('a'+i))
		pod.Status.ResourceClaimStatuses = []corev1.PodResourceClaimStatus{{Name: "gpus", ResourceClaimName: ptr.To(claimName)}}
		if err := k8s.Status().Update(t.Context(), pod); err != nil {
			t.Fatalf("%s: record the claim in the pod's status: %v", tc.name, err)
		}
		c := gpuClaim(ns, claimName, 2)
		c.Spec.Devices.Requests[0].Exactly.AdminAccess = ptr.To(true)
		if tc.annot {
			c.Annotations = map[string]string{"resource.kubernetes.io/pod-claim-name": "gpus"}
		}
		owner := tc.owner
		owner.UID, owner.Controller = pod.UID, ptr.To(true)
		c.OwnerReferences = []metav1.OwnerReference{owner}
		// What the scheduler checks before it uses the claim for the pod.
		name, mustCheck, err := resourceclaim.Name(pod, &pod.Spec.ResourceClaims[0])
		if err != nil || name == nil || *name != claimName || !mustCheck {
			t.Fatalf("%s: resourceclaim.Name = %v %v %v", tc.name, name, mustCheck, err)
		}
		c.Namespace = ns
		forPod := resourceclaim.IsForPod(pod, c, false) == nil
		err = k8s.Create(t.Context(), c)
		if err == nil {
			t.Cleanup(func() { _ = k8s.Delete(context.Background(), c) })
			t.Errorf("%s: claim %q with admin access to 2 GPUs, controller owner %s %s %q uid %s, annotation %v: created; "+
				"the scheduler takes it for pod %q (IsForPod: %v), admitted for 1 GPU with a 300 W limit",
				tc.name, claimName, owner.APIVersion, owner.Kind, owner.Name, owner.UID, tc.annot, "limited", forPod)
		} else {
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
}
