package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/klog/v2"

	"github.com/dynamo-power/gpu-power/pkg/agent/kube"
)

// eventTries bounds the POSTs of one Event: client-go's broadcaster tries 12
// times, 10 s apart, but the agent's Events are about the cap it set just now,
// and a queue held for two minutes would drop the newer ones.
const eventTries = 5

// Recorder posts events.k8s.io/v1 Events on pods, as controller-runtime's
// recorder did. client-go's recorders would link strategic merge patch and its
// OpenAPI models (3 MB of the binary, all of it resident) to merge repeated
// Events, and the agent tells a pod each thing once.
type Recorder struct {
	kube     *kube.Client
	instance string
	log      logr.Logger
	queue    chan *eventsv1.Event
	// retryWait is the wait after an Event's first transient failure; it
	// doubles with each try (0.5, 1, 2, 4 s).
	retryWait time.Duration
}

// NewRecorder queues Events; Post sends them.
func NewRecorder(k *kube.Client, log logr.Logger) *Recorder {
	host, _ := os.Hostname() // the pod's name, as client-go names the instance
	return &Recorder{kube: k, instance: "power-agent-" + host, log: log,
		queue: make(chan *eventsv1.Event, 256), retryWait: 500 * time.Millisecond}
}

// Eventf queues the Event: a reconcile never waits for the API server, and an
// Event that finds the queue full is dropped, as client-go drops it.
func (r *Recorder) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref, err := r.kube.Reference(regarding)
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

// Post sends the queued Events, in order, until ctx is done.
func (r *Recorder) Post(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-r.queue:
			r.record(ctx, e)
		}
	}
}

// record posts e, and posts it again after a transient failure. The Events
// behind it wait meanwhile: the API server that could not take this one
// (down, throttling, overloaded) would not take the next either, and waiting
// keeps their tries for when it is back rather than spending them now.
func (r *Recorder) record(ctx context.Context, e *eventsv1.Event) {
	pod := klog.KRef(e.Regarding.Namespace, e.Regarding.Name)
	body, err := json.Marshal(e)
	if err != nil {
		r.log.Error(err, "Could not record event", "pod", pod, "reason", e.Reason)
		return
	}
	wait := r.retryWait
	for try := 1; ; try++ {
		err = r.kube.PostEvent(ctx, e.Namespace, body)
		if err == nil {
			r.log.V(1).Info("Recorded event", "pod", pod, "type", e.Type, "reason", e.Reason, "note", e.Note)
			return
		}
		if try < eventTries && transient(err) {
			r.log.V(1).Info("Could not record event, retrying", "pod", pod, "reason", e.Reason, "try", try, "wait", wait, "err", err)
			select {
			case <-time.After(wait):
				wait *= 2
				continue
			case <-ctx.Done():
			}
		}
		r.log.Error(err, "Could not record event", "pod", pod, "reason", e.Reason, "tries", try)
		return
	}
}

// transient tells a failure that may pass from an answer that would be the
// same next time (403 in a namespace being deleted, 404, 422).
func transient(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return true // no answer: connection refused or reset, timeout
	}
	code := status.Status().Code
	return code == http.StatusTooManyRequests || code >= http.StatusInternalServerError
}
