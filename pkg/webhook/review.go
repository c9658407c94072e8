package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// maxReviewBytes bounds an AdmissionReview's body, as controller-runtime's
// webhook server does: the API server stores objects of at most 3 MiB, and a
// review of an update carries two.
const maxReviewBytes = 7 << 20

// preallocated bounds what a body's declared length allocates before its
// bytes arrive: a review of a large pod (tens of kB) is read in one buffer.
const preallocated = 64 << 10

// bodyTimeout is how long a caller has to send a review's body (a variable
// so that a test need not wait as long).
var bodyTimeout = 10 * time.Second

// reviewVersion is the only AdmissionReview version served; both webhook
// configurations ask for it (admissionReviewVersions: [v1]).
const reviewVersion = "admission.k8s.io/v1"

// Review serves AdmissionReviews to an admission webhook, read in one
// streaming pass: the objects are kept as the raw bytes the handlers decode,
// never decoded in full first. controller-runtime's server decodes each
// review twice (once for its kind, once into the API type) before the
// handler sees it: 85% of the CPU of an admission of a 25 kB pod
// (docs/benchmarks.md). Panic recovery, the request's logger and the
// response's completion are the webhook's own (admission.Webhook.Handle).
type Review struct {
	Webhook *admission.Webhook
}

// NewReview serves h. Its requests' logger is the webhook's own, without
// the per-request values controller-runtime adds to every request: they cost
// allocations on each admission, and logDecision adds them to the few lines
// that are logged.
func NewReview(h admission.Handler) Review {
	return Review{Webhook: &admission.Webhook{Handler: h, LogConstructor: func(base logr.Logger, _ *admission.Request) logr.Logger { return base }}}
}

// ServeHTTP implements http.Handler.
func (rv Review) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A caller gets this long to send its body; a slow one (a tenant pod
	// holding connections open) ties up no more than that. net/http sets
	// the connection's deadline again for the next request.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	body := bodies.Get().(*bytes.Buffer)
	defer releaseBody(body)
	req, err := readReview(r, body)
	if err != nil {
		log.Log.WithName("admission").Error(err, "Unable to read the admission review", "path", r.URL.Path)
		writeReview(w, admission.Errored(http.StatusBadRequest, err))
		return
	}
	writeReview(w, rv.Webhook.Handle(r.Context(), req))
}

// bodies holds the buffers reviews are read into, from one request to the
// next: a body was a tenth of what an admission allocated. A buffer is given
// back once its review is answered, so a request's raw objects (Object.Raw,
// OldObject.Raw, Options.Raw) are valid only while its handler runs: the
// handlers decode copies of what they keep (TestPooledBodiesAreNotKept).
var bodies = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooledBody is the largest buffer kept for the next request: one grown
// by a rare large review is left to the garbage collector.
const maxPooledBody = 256 << 10

func releaseBody(b *bytes.Buffer) {
	if b.Cap() <= maxPooledBody {
		b.Reset()
		bodies.Put(b)
	}
}

func readReview(r *http.Request, buf *bytes.Buffer) (admission.Request, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return admission.Request{}, errors.New("request body is empty")
	}
	defer func() { _ = r.Body.Close() }()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return admission.Request{}, fmt.Errorf("contentType=%s, expected application/json", ct)
	}
	body, err := readBody(r, buf)
	if err != nil {
		return admission.Request{}, err
	}
	return decodeReview(body)
}

// readBody reads a body of at most maxReviewBytes into buf, grown to the
// length the caller declares, up to preallocated: a declared length is only
// a claim, and a caller that declares 7 MiB and sends nothing must not get
// 7 MiB allocated. Longer bodies grow the buffer as they arrive.
func readBody(r *http.Request, buf *bytes.Buffer) ([]byte, error) {
	if r.ContentLength > maxReviewBytes {
		return nil, fmt.Errorf("request entity is too large; limit is %d bytes", maxReviewBytes)
	}
	// bytes.Buffer reads in steps that keep MinRead bytes free.
	buf.Grow(int(min(max(r.ContentLength, 0), preallocated)) + bytes.MinRead)
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, maxReviewBytes+1)); err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if buf.Len() > maxReviewBytes {
		return nil, fmt.Errorf("request entity is too large; limit is %d bytes", maxReviewBytes)
	}
	return buf.Bytes(), nil
}

// decodeReview reads an admission.k8s.io/v1 AdmissionReview. Its request's
// object, oldObject and options stay raw (RawExtension, as the API type
// keeps them); its small fields are decoded as the API server's own decoder
// does, case-sensitively with the API types' tags.
func decodeReview(body []byte) (admission.Request, error) {
	var req admission.Request
	d := decoderFor(body)
	defer release(d)
	if d.PeekKind() != '{' {
		return req, errors.New("admission review: not a JSON object")
	}
	var apiVersion, kind string
	sawRequest := false
	err := eachField(d, func(key string) (err error) {
		switch key {
		case "apiVersion":
			apiVersion, err = decodeString(d)
		case "kind":
			kind, err = decodeString(d)
		case "request":
			// A repeated request adds to the first, as encoding/json does.
			sawRequest = true
			err = decodeRequest(d, body, &req.AdmissionRequest)
		default:
			return d.SkipValue()
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", key, err)
		}
		return err
	})
	if err != nil {
		return req, fmt.Errorf("admission review: %w", err)
	}
	if _, err := d.ReadToken(); !errors.Is(err, io.EOF) {
		return req, errors.New("admission review: trailing data after the object")
	}
	switch {
	case apiVersion != reviewVersion || kind != "AdmissionReview":
		return req, fmt.Errorf("admission review: got apiVersion %q kind %q; only %s AdmissionReview is served", apiVersion, kind, reviewVersion)
	case !sawRequest:
		return req, errors.New("admission review: no request")
	}
	return req, nil
}

// decodeRequest reads an AdmissionRequest the way encoding/json does into
// the API type: fields by their exact tag, unknown ones skipped, null
// leaving a field as it was, a repeated field overwriting (maps merging).
// The small fields are read by hand: through encoding/json they were 15% of
// the webhook's CPU under load.
func decodeRequest(d *jsontext.Decoder, body []byte, r *admissionv1.AdmissionRequest) error {
	return eachField(d, func(key string) (err error) {
		switch key {
		case "object":
			err = rawValue(d, body, &r.Object.Raw)
		case "oldObject":
			err = rawValue(d, body, &r.OldObject.Raw)
		case "options":
			err = rawValue(d, body, &r.Options.Raw)
		case "uid":
			err = decodeStringInto(d, (*string)(&r.UID))
		case "kind":
			err = decodeGVK(d, &r.Kind)
		case "resource":
			err = decodeGVR(d, &r.Resource)
		case "subResource":
			err = decodeStringInto(d, &r.SubResource)
		case "requestKind":
			r.RequestKind, err = decodeOptional(d, r.RequestKind, decodeGVK)
		case "requestResource":
			r.RequestResource, err = decodeOptional(d, r.RequestResource, decodeGVR)
		case "requestSubResource":
			err = decodeStringInto(d, &r.RequestSubResource)
		case "name":
			err = decodeStringInto(d, &r.Name)
		case "namespace":
			err = decodeStringInto(d, &r.Namespace)
		case "operation":
			err = decodeStringInto(d, (*string)(&r.Operation))
		case "userInfo":
			err = decodeUserInfo(d, &r.UserInfo)
		case "dryRun":
			r.DryRun, err = decodeBool(d, r.DryRun)
		default:
			return d.SkipValue()
		}
		if err != nil {
			err = fmt.Errorf("request.%s: %w", key, err)
		}
		return err
	})
}

// rawValue sets *raw to the next value, checked to be well-formed JSON, as
// the bytes of body it spans (no copy: body lives as long as the request);
// null leaves it as it was, as RawExtension.UnmarshalJSON does.
func rawValue(d *jsontext.Decoder, body []byte, raw *[]byte) error {
	if d.PeekKind() == 'n' {
		_, err := d.ReadToken()
		return err
	}
	// After a name the input stands at its colon.
	start := d.InputOffset()
	if err := d.SkipValue(); err != nil {
		return err
	}
	v := bytes.TrimLeft(body[start:d.InputOffset()], " \t\r\n")
	v = bytes.TrimLeft(bytes.TrimPrefix(v, []byte(":")), " \t\r\n")
	*raw = v[:len(v):len(v)]
	return nil
}

// decodeStringInto sets *s to the next string; null leaves it.
func decodeStringInto(d *jsontext.Decoder, s *string) error {
	if d.PeekKind() == 'n' {
		_, err := d.ReadToken()
		return err
	}
	v, err := decodeString(d)
	if err == nil {
		*s = v
	}
	return err
}

func decodeGVK(d *jsontext.Decoder, k *metav1.GroupVersionKind) error {
	return eachField(d, func(key string) error {
		switch key {
		case "group":
			return decodeStringInto(d, &k.Group)
		case "version":
			return decodeStringInto(d, &k.Version)
		case "kind":
			return decodeStringInto(d, &k.Kind)
		}
		return d.SkipValue()
	})
}

func decodeGVR(d *jsontext.Decoder, r *metav1.GroupVersionResource) error {
	return eachField(d, func(key string) error {
		switch key {
		case "group":
			return decodeStringInto(d, &r.Group)
		case "version":
			return decodeStringInto(d, &r.Version)
		case "resource":
			return decodeStringInto(d, &r.Resource)
		}
		return d.SkipValue()
	})
}

// decodeOptional decodes into a pointer field: null sets it to nil, a value
// fills the struct it points to (allocated when nil).
func decodeOptional[T any](d *jsontext.Decoder, p *T, decode func(*jsontext.Decoder, *T) error) (*T, error) {
	if d.PeekKind() == 'n' {
		_, err := d.ReadToken()
		return nil, err
	}
	if p == nil {
		p = new(T)
	}
	return p, decode(d, p)
}

func decodeBool(d *jsontext.Decoder, p *bool) (*bool, error) {
	tok, err := d.ReadToken()
	if err != nil {
		return p, err
	}
	switch tok.Kind() {
	case 'n':
		return nil, nil
	case 't', 'f':
		v := tok.Bool()
		return &v, nil
	}
	return p, fmt.Errorf("want a boolean, got %v", tok.Kind())
}

func decodeUserInfo(d *jsontext.Decoder, u *authenticationv1.UserInfo) error {
	return eachField(d, func(key string) (err error) {
		switch key {
		case "username":
			return decodeStringInto(d, &u.Username)
		case "uid":
			return decodeStringInto(d, &u.UID)
		case "groups":
			u.Groups, err = decodeStrings(d, u.Groups)
			return err
		case "extra":
			return decodeExtra(d, &u.Extra)
		}
		return d.SkipValue()
	})
}

// decodeStrings reads a list of strings into have's memory, as
// encoding/json reuses a slice; null sets it to nil.
func decodeStrings(d *jsontext.Decoder, have []string) ([]string, error) {
	tok, err := d.ReadToken()
	if err != nil {
		return have, err
	}
	switch tok.Kind() {
	case 'n':
		return nil, nil
	case '[':
	default:
		return have, fmt.Errorf("want a list, got %v", tok.Kind())
	}
	out := have[:0]
	if out == nil {
		out = []string{}
	}
	for d.PeekKind() != ']' {
		var s string
		if err := decodeStringInto(d, &s); err != nil {
			return have, err
		}
		out = append(out, s)
	}
	_, err = d.ReadToken()
	return out, err
}

func decodeExtra(d *jsontext.Decoder, extra *map[string]authenticationv1.ExtraValue) error {
	if d.PeekKind() == 'n' {
		_, err := d.ReadToken()
		*extra = nil
		return err
	}
	return eachField(d, func(key string) error {
		if *extra == nil {
			*extra = map[string]authenticationv1.ExtraValue{}
		}
		v, err := decodeStrings(d, nil)
		(*extra)[key] = v
		return err
	})
}

// writeReview answers with a v1 AdmissionReview holding resp.
func writeReview(w http.ResponseWriter, resp admission.Response) {
	w.Header().Set("Content-Type", "application/json")
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: reviewVersion, Kind: "AdmissionReview"},
		Response: &resp.AdmissionResponse,
	}
	// An error here is a broken connection: there is no one left to answer.
	_ = json.NewEncoder(w).Encode(review)
}
