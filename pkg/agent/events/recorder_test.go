package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/dynamo-power/gpu-power/internal/testlog"
	"github.com/dynamo-power/gpu-power/pkg/agent/kube/kubetest"
)

var decodePod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "decode-0", Namespace: "llm", UID: "pod-1"}}

// eventsAPI stands in for the API server's events endpoint: it answers each
// POST with the next code of script (-1 drops the connection), then 201.
type eventsAPI struct {
	t      *testing.T
	mu     sync.Mutex
	script []int
	posts  int
	stored []eventsv1.Event
}

func (a *eventsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if want := "/apis/events.k8s.io/v1/namespaces/llm/events"; r.Method != http.MethodPost || r.URL.Path != want {
		a.t.Errorf("%s %s, want POST %s", r.Method, r.URL.Path, want)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		a.t.Errorf("Content-Type %q, want application/json", ct)
	}
	var e eventsv1.Event
	if err := json.NewDecoder(r.Body).Decode(&e); err != nil {
		a.t.Errorf("decode Event: %v", err)
	}
	a.mu.Lock()
	a.posts++
	code := http.StatusCreated
	if len(a.script) > 0 {
		code, a.script = a.script[0], a.script[1:]
	}
	if code == http.StatusCreated {
		e.Name = e.GenerateName + "x1"
		a.stored = append(a.stored, e)
	}
	a.mu.Unlock()
	switch code {
	case -1:
		panic(http.ErrAbortHandler)
	case http.StatusCreated:
		kubetest.WriteJSON(w, code, e)
	default:
		kubetest.WriteStatus(w, code)
	}
}

func (a *eventsAPI) counts() (posts, stored int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.posts, len(a.stored)
}

// newRecorder is the agent's recorder against api, with 1 ms for the first
// retry's 500 ms; post is not started.
func newRecorder(t *testing.T, api *eventsAPI) (*Recorder, *testlog.Lines) {
	api.t = t
	k, _ := kubetest.APIServer(t, api.ServeHTTP)
	logs := testlog.New(t)
	r := NewRecorder(k, logs.Logger)
	r.retryWait = time.Millisecond
	return r, logs
}

// start runs the poster; stop ends its ctx and fails the test unless it
// returns promptly. Every test stops it at its end.
func start(t *testing.T, r *Recorder) (stop func()) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Post(ctx)
	}()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the poster went on after ctx ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

func TestEventRecorderPosts(t *testing.T) {
	api := &eventsAPI{}
	r, logs := newRecorder(t, api)
	start(t, r)
	r.Eventf(decodePod, nil, corev1.EventTypeWarning, "PowerLimitConflict", "SetPowerLimit",
		"pods %s and %s share GPU %d", "decode-0", "decode-1", 2)
	logs.WaitFor(t, "Recorded event")

	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.stored) != 1 {
		t.Fatalf("%d Events stored, want 1", len(api.stored))
	}
	e := api.stored[0]
	host, _ := os.Hostname()
	for _, f := range []struct{ name, got, want string }{
		{"apiVersion", e.APIVersion, "events.k8s.io/v1"},
		{"kind", e.Kind, "Event"},
		{"metadata.namespace", e.Namespace, "llm"},
		{"metadata.generateName", e.GenerateName, "decode-0-"},
		{"type", e.Type, "Warning"},
		{"reason", e.Reason, "PowerLimitConflict"},
		{"action", e.Action, "SetPowerLimit"},
		{"note", e.Note, "pods decode-0 and decode-1 share GPU 2"},
		{"reportingController", e.ReportingController, "power-agent"},
		{"reportingInstance", e.ReportingInstance, "power-agent-" + host},
		{"regarding", fmt.Sprintf("%s %s %s/%s %s", e.Regarding.APIVersion, e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, e.Regarding.UID),
			"v1 Pod llm/decode-0 pod-1"},
	} {
		if f.got != f.want {
			t.Errorf("%s %q, want %q", f.name, f.got, f.want)
		}
	}
	if e.EventTime.IsZero() {
		t.Error("eventTime not set: the API server refuses such an Event")
	}
}

func TestEventRecorderRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		script    []int
		wantPosts int
		wantLog   string
		landed    bool
	}{
		{"503 twice, then created: lands once", []int{503, 503}, 3, "Recorded event", true},
		{"throttled (429), then created: lands once", []int{429}, 2, "Recorded event", true},
		{"connection dropped, then created: lands once", []int{-1}, 2, "Recorded event", true},
		{"500 every time: gives up after 5 tries", []int{500, 500, 500, 500, 500, 500}, 5, "Could not record event", false},
		{"namespace being deleted (403): tried once", []int{403}, 1, "Could not record event", false},
		{"invalid (422): tried once", []int{422}, 1, "Could not record event", false},
		{"namespace gone (404): tried once", []int{404}, 1, "Could not record event", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &eventsAPI{script: tc.script}
			r, logs := newRecorder(t, api)
			start(t, r)
			r.Eventf(decodePod, nil, corev1.EventTypeNormal, "PowerLimitSet", "SetPowerLimit", "set to 250 W")
			logs.WaitFor(t, tc.wantLog)
			wantStored := 0
			if tc.landed {
				wantStored = 1
			}
			if posts, stored := api.counts(); posts != tc.wantPosts || stored != wantStored {
				t.Errorf("%d POSTs, %d Events stored; want %d POSTs, landed %t", posts, stored, tc.wantPosts, tc.landed)
			}
			if !tc.landed && len(logs.Find("Could not record event")) != 1 {
				t.Errorf("the lost Event logged %d times, want once", len(logs.Find("Could not record event")))
			}
		})
	}
}

func TestTransient(t *testing.T) {
	events := schema.GroupResource{Group: "events.k8s.io", Resource: "events"}
	refused := &url.Error{Op: "Post", URL: "https://10.0.0.1/apis", Err: &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"connection refused", refused, true},
		{"timeout", fmt.Errorf("post: %w", context.DeadlineExceeded), true},
		{"429 throttled", apierrors.NewTooManyRequests("slow down", 1), true},
		{"500 internal error", apierrors.NewInternalError(errors.New("etcd")), true},
		{"503 unavailable", apierrors.NewServiceUnavailable("shutting down"), true},
		{"504 timeout", apierrors.NewTimeoutError("no answer", 1), true},
		{"server timeout", apierrors.NewServerTimeout(events, "create", 1), true},
		{"403 namespace being deleted", apierrors.NewForbidden(events, "", errors.New("namespace llm is being terminated")), false},
		{"404 namespace gone", apierrors.NewNotFound(schema.GroupResource{Resource: "namespaces"}, "llm"), false},
		{"422 invalid", apierrors.NewInvalid(schema.GroupKind{Group: "events.k8s.io", Kind: "Event"}, "", field.ErrorList{field.Required(field.NewPath("eventTime"), "")}), false},
		{"400 bad request", apierrors.NewBadRequest("bad"), false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("%s: transient %t, want %t", tc.name, got, tc.want)
		}
	}
}

func TestEventRecorderFullQueue(t *testing.T) {
	r, logs := newRecorder(t, &eventsAPI{})
	// No poster: the queue fills.
	for range cap(r.queue) {
		r.Eventf(decodePod, nil, corev1.EventTypeNormal, "PowerLimitSet", "SetPowerLimit", "set to 250 W")
	}
	if dropped := logs.Find("Dropped event: too many waiting"); len(dropped) != 0 {
		t.Fatalf("dropped before the queue was full: %v", dropped)
	}
	returned := make(chan struct{})
	go func() {
		r.Eventf(decodePod, nil, corev1.EventTypeNormal, "PowerLimitRestored", "SetPowerLimit", "restored")
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("Eventf blocked on a full queue")
	}
	dropped := logs.Find("Dropped event: too many waiting")
	if len(dropped) != 1 || dropped[0]["reason"] != "PowerLimitRestored" {
		t.Errorf("logged drops %v, want the one PowerLimitRestored", dropped)
	}
}

func TestEventfUnknownKind(t *testing.T) {
	api := &eventsAPI{}
	r, logs := newRecorder(t, api)
	r.Eventf(&appsv1.DaemonSet{}, nil, corev1.EventTypeNormal, "PowerLimitSet", "SetPowerLimit", "set")
	if len(logs.Find("Could not record event")) != 1 || len(r.queue) != 0 {
		t.Errorf("an object outside the agent's scheme: %d queued, logs %v", len(r.queue), logs.All())
	}
}

func TestEventRecorderStops(t *testing.T) {
	for _, tc := range []struct {
		name    string
		script  []int
		waiting string // the log line once the poster is where ctx ends it
	}{
		{"idle", nil, ""},
		{"waiting to retry", []int{503}, "Could not record event, retrying"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r, logs := newRecorder(t, &eventsAPI{script: tc.script})
			r.retryWait = time.Hour
			stop := start(t, r)
			if tc.waiting != "" {
				r.Eventf(decodePod, nil, corev1.EventTypeNormal, "PowerLimitSet", "SetPowerLimit", "set to 250 W")
				logs.WaitFor(t, tc.waiting)
			}
			stop()
			if lost := logs.Find("Could not record event"); len(lost) != len(tc.script) {
				t.Errorf("logged %d Events lost, want %d: %s", len(lost), len(tc.script), logs.All())
			}
		})
	}
}
