package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/reference"
	"k8s.io/klog/v2"
)

// eventRecorder posts events.k8s.io/v1 Events on pods, as controller-runtime's
// recorder did. client-go's recorders would link strategic merge patch and its
// OpenAPI models (3 MB of the binary, all of it resident) to merge repeated
// Events, and the agent tells a pod each thing once.
type eventRecorder struct {
	kube     *kube
	instance string
	log      logr.Logger
	queue    chan *eventsv1.Event
}

// newEventRecorder posts Events until ctx is done.
func newEventRecorder(ctx context.Context, k *kube, log logr.Logger) *eventRecorder {
	host, _ := os.Hostname() // the pod's name, as client-go names the instance
	r := &eventRecorder{kube: k, instance: "power-agent-" + host, log: log, queue: make(chan *eventsv1.Event, 256)}
	go r.post(ctx)
	return r
}

// Eventf queues the Event: a reconcile never waits for the API server, and an
// Event that finds the queue full is dropped, as client-go drops it.
func (r *eventRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref, err := reference.GetReference(r.kube.scheme, regarding)
	if err != nil {
		r.log.Error(err, "Could not record event", "reason", reason)
		return
	}
	e := &eventsv1.Event{
		TypeMeta:   metav1.TypeMeta{APIVersion: eventsv1.SchemeGroupVersion.String(), Kind: "Event"},
		ObjectMeta: metav1.ObjectMeta{GenerateName: ref.Name + "-", Namespace: ref.Namespace},
		EventTime:  metav1.NowMicro(), ReportingController: "power-agent", ReportingInstance: r.instance,
		Action: action, Reason: reason, Regarding: *ref, Note: fmt.Sprintf(note, args...), Type: eventtype,
	}
	select {
	case r.queue <- e:
	default:
		r.log.Error(nil, "Dropped event: too many waiting", "pod", klog.KRef(ref.Namespace, ref.Name), "reason", reason)
	}
}

func (r *eventRecorder) post(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-r.queue:
			pod := klog.KRef(e.Regarding.Namespace, e.Regarding.Name)
			body, err := json.Marshal(e)
			if err == nil {
				err = r.kube.rest.Post().AbsPath("/apis/events.k8s.io/v1/namespaces", e.Namespace, "events").
					SetHeader("Content-Type", "application/json").Body(body).Timeout(10 * time.Second).Do(ctx).Error()
			}
			if err != nil {
				r.log.Error(err, "Could not record event", "pod", pod, "reason", e.Reason)
				continue
			}
			r.log.V(1).Info("Recorded event", "pod", pod, "type", e.Type, "reason", e.Reason, "note", e.Note)
		}
	}
}
