package kube_test

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/dynamo-power/gpu-power/pkg/agent"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube/kubetest"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
	"github.com/dynamo-power/gpu-power/pkg/nvmlctl/nvmlfake"
	"github.com/dynamo-power/gpu-power/pkg/podmap"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// richPod is a pod with every part of the object filled in, as a real GPU
// worker's is, with the power annotations given ("" for none).
func richPod(i int, limit, stamp string, phase corev1.PodPhase, started bool) *corev1.Pod {
	now := metav1.NewTime(time.Date(2026, 12, 1, 0, 0, i, 0, time.UTC))
	annotations := map[string]string{"example.com/config": strings.Repeat("x", 4096), "kubectl.kubernetes.io/last-applied-configuration": "{}"}
	if limit != "" {
		annotations[policy.AnnotationPowerLimit] = limit
	}
	if stamp != "" {
		annotations[policy.AnnotationPowerLimitValidated] = stamp
	}
	gpus := corev1.ResourceList{policy.ResourceGPU: resource.MustParse("1")}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("worker-%d", i), Namespace: "llm", UID: types.UID(fmt.Sprintf("0b6a4e2c-1111-4c8e-9a57-%012d", i)),
			ResourceVersion: fmt.Sprint(100 + i), Generation: 3, CreationTimestamp: now,
			Labels: map[string]string{"app": "worker"}, Annotations: annotations, Finalizers: []string{"example.com/keep"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "StatefulSet", Name: "worker", UID: "sts-1"}},
		},
		Spec: corev1.PodSpec{
			NodeName: "gpu-1", RuntimeClassName: ptr.To("nvidia"), SchedulerName: "default-scheduler", Priority: ptr.To(int32(1000)),
			NodeSelector: map[string]string{policy.LabelGPUProduct: "NVIDIA-H100-80GB-HBM3"},
			Containers: []corev1.Container{{Name: "main", Image: "registry.example/worker:1",
				Env:       []corev1.EnvVar{{Name: "NVIDIA_VISIBLE_DEVICES", Value: "all"}, {Name: "BIG", Value: strings.Repeat("y", 4096)}},
				Resources: corev1.ResourceRequirements{Limits: gpus, Requests: gpus}}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		},
		Status: corev1.PodStatus{
			Phase: phase, QOSClass: corev1.PodQOSGuaranteed, HostIP: "10.0.0.1", PodIP: "10.1.0.1", Reason: "r", Message: "m",
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "main", Ready: true, RestartCount: 2}},
		},
	}
	if started {
		p.Status.StartTime = &now
	}
	if i%3 == 0 {
		p.DeletionTimestamp = &now
	}
	return p
}

type pods []*corev1.Pod

func (p pods) List(labels.Selector) ([]*corev1.Pod, error) { return p, nil }

type kubelet []podmap.PodDevices

func (k kubelet) List(context.Context) ([]podmap.PodDevices, error) { return k, nil }

// seen records what the agent tells pods, as the agent's recorder builds it.
type seen struct {
	kube   *kube.Client
	events []string
}

func (s *seen) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref, err := s.kube.Reference(regarding)
	s.events = append(s.events, fmt.Sprintf("%+v %v %s %s %s %s", ref, err, eventtype, reason, action, fmt.Sprintf(note, args...)))
}

// TestTrimPodKeepsWhatTheAgentReads runs the agent's cycles (pods to GPU
// holders, decisions, writes, Events) twice over the same node, once with
// whole pods and once with the pods the informer keeps, and wants the same
// outcome: if the agent starts reading a field trimPod drops, this fails.
func TestTrimPodKeepsWhatTheAgentReads(t *testing.T) {
	k, _ := kubetest.APIServer(t, podsServer(t))
	whole := pods{
		richPod(0, "250", "250", corev1.PodRunning, true),
		richPod(1, "300", "300", corev1.PodRunning, true),                                               // shares GPU 0: a conflict
		richPod(2, "400", "", corev1.PodRunning, true),                                                  // not validated
		richPod(3, "", "", corev1.PodRunning, true),                                                     // unlimited, shares GPU 0
		richPod(4, "350", "350", corev1.PodSucceeded, true),                                             // finished
		richPod(5, "150", "150", corev1.PodPending, false),                                              // clamped, not started
		richPod(6, "2"+strings.Repeat("0", 100), "2"+strings.Repeat("0", 100), corev1.PodRunning, true), // too long
		richPod(7, "280", "280", corev1.PodRunning, true),                                               // stray on GPU 3
	}
	// Stamps are signed at the pods' creation, as the webhook signs them: the
	// agent checks the signature against the creationTimestamp.
	key := policy.NewStampKey([]byte("test key material, at least 32 bytes long"))
	for _, p := range whole {
		if stamp := p.Annotations[policy.AnnotationPowerLimitValidated]; stamp != "" {
			p.Annotations[policy.AnnotationPowerLimitSignature] = key.SignCreate(p.Namespace, stamp, p.CreationTimestamp.Time)
		}
	}
	var trimmed pods
	for _, p := range whole {
		tp, err := kube.TrimPod(p.DeepCopy())
		if err != nil {
			t.Fatal(err)
		}
		trimmed = append(trimmed, tp.(*corev1.Pod))
	}
	gpu := func(i int) podmap.DeviceRef { return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: nvmlfake.UUID(i)} }
	replica := func(i int) podmap.DeviceRef {
		return podmap.DeviceRef{Kind: podmap.KindGPU, UUID: nvmlfake.UUID(i), Part: true}
	}
	alloc := kubelet{
		{Namespace: "llm", Name: "worker-0", Devices: []podmap.DeviceRef{replica(0)}},
		{Namespace: "llm", Name: "worker-1", Devices: []podmap.DeviceRef{replica(0)}},
		{Namespace: "llm", Name: "worker-2", Devices: []podmap.DeviceRef{gpu(1)}},
		{Namespace: "llm", Name: "worker-3", Devices: []podmap.DeviceRef{replica(0)}},
		{Namespace: "llm", Name: "worker-4", Devices: []podmap.DeviceRef{gpu(2)}},
		{Namespace: "llm", Name: "worker-5", Devices: []podmap.DeviceRef{gpu(2)}},
		{Namespace: "llm", Name: "worker-6", Devices: []podmap.DeviceRef{gpu(3)}},
		{Namespace: "llm", Name: "worker-7", Devices: []podmap.DeviceRef{gpu(4)}},
	}
	run := func(ps pods) ([]agent.GPUReport, []string) {
		gpus := nvmlfake.H100s(5)
		gpus[3].Processes = []nvmlctl.Process{{Kind: nvmlctl.Compute, PID: 77}}
		ledger, err := agent.OpenLedger(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		rec := &seen{kube: k}
		e := &agent.Enforcer{NVML: nvmlfake.New(gpus...), Ledger: ledger, RequireValidation: true, StampKey: key, Recorder: rec, Log: logr.Discard()}
		proc := fstest.MapFS{"77/cgroup": {Data: []byte("0::/kubepods/pod" + string(whole[7].UID) + "/abc\n")}}
		r := &agent.Runner{Enforcer: e, Pods: ps, PodResources: alloc, Proc: proc, Log: logr.Discard()}
		var reports []agent.GPUReport
		for range 2 {
			if err := r.Cycle(t.Context()); err != nil {
				t.Logf("cycle: %v", err)
			}
			in, err := r.Gather(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if reports, err = e.Reconcile(t.Context(), in, true); err != nil {
				t.Fatal(err)
			}
		}
		return reports, rec.events
	}
	wantReports, wantEvents := run(whole)
	gotReports, gotEvents := run(trimmed)
	if !reflect.DeepEqual(gotReports, wantReports) {
		t.Errorf("with trimmed pods the agent decides\n%+v\nwith whole pods\n%+v", gotReports, wantReports)
	}
	if !reflect.DeepEqual(gotEvents, wantEvents) {
		t.Errorf("with trimmed pods the agent tells\n%s\nwith whole pods\n%s", strings.Join(gotEvents, "\n"), strings.Join(wantEvents, "\n"))
	}
	// The scenario exercises what it claims to.
	for _, want := range []string{agent.ReasonApplied, agent.ReasonConflict, agent.ReasonNotValidated, agent.ReasonClamped, agent.ReasonUnallocated} {
		if !strings.Contains(strings.Join(wantEvents, "\n"), " "+want+" ") {
			t.Errorf("no %s event in the scenario:\n%s", want, strings.Join(wantEvents, "\n"))
		}
	}
}

func TestTrimPod(t *testing.T) {
	whole := richPod(1, "250", "250", corev1.PodRunning, true)
	got, err := kube.TrimPod(whole.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	want := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: whole.Name, Namespace: "llm", UID: whole.UID, ResourceVersion: whole.ResourceVersion,
			CreationTimestamp: whole.CreationTimestamp,
			Annotations:       map[string]string{policy.AnnotationPowerLimit: "250", policy.AnnotationPowerLimitValidated: "250"}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, StartTime: whole.Status.StartTime},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("trimPod = %+v; want %+v", got, want)
	}
	again, _ := kube.TrimPod(got)
	if !reflect.DeepEqual(again, want) {
		t.Errorf("trimPod is not idempotent: %+v", again)
	}
	long, _ := kube.TrimPod(richPod(2, strings.Repeat("9", 1<<20), "", corev1.PodRunning, true))
	if v := long.(*corev1.Pod).Annotations[policy.AnnotationPowerLimit]; len(v) != kube.MaxKeptAnnotation+3 {
		t.Errorf("a 1 MiB limit annotation is kept as %d bytes", len(v))
	}
	if none, _ := kube.TrimPod(richPod(3, "", "", corev1.PodRunning, true)); none.(*corev1.Pod).Annotations != nil {
		t.Errorf("a pod without power annotations keeps %v", none.(*corev1.Pod).Annotations)
	}
	tomb := cache.DeletedFinalStateUnknown{Key: "llm/x", Obj: want}
	if got, _ := kube.TrimPod(tomb); !reflect.DeepEqual(got, tomb) {
		t.Errorf("trimPod changed a tombstone: %+v", got)
	}
}
