package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// maxReviewBytes bounds an AdmissionReview's body, as controller-runtime's
// webhook server does: the API server stores objects of at most 3 MiB, and a
// review of an update carries two.
const maxReviewBytes = 7 << 20

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

// ServeHTTP implements http.Handler.
func (rv Review) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	req, err := readReview(r)
	if err != nil {
		log.Log.WithName("admission").Error(err, "Unable to read the admission review", "path", r.URL.Path)
		writeReview(w, admission.Errored(http.StatusBadRequest, err))
		return
	}
	writeReview(w, rv.Webhook.Handle(r.Context(), req))
}

func readReview(r *http.Request) (admission.Request, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return admission.Request{}, errors.New("request body is empty")
	}
	defer func() { _ = r.Body.Close() }()
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return admission.Request{}, fmt.Errorf("contentType=%s, expected application/json", ct)
	}
	body, err := readBody(r)
	if err != nil {
		return admission.Request{}, err
	}
	return decodeReview(body)
}

// readBody reads a body of at most maxReviewBytes: into one buffer of the
// length the API server sends, or growing when it sends none.
func readBody(r *http.Request) ([]byte, error) {
	tooLarge := fmt.Errorf("request entity is too large; limit is %d bytes", maxReviewBytes)
	if r.ContentLength > maxReviewBytes {
		return nil, tooLarge
	}
	if r.ContentLength >= 0 {
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, fmt.Errorf("read body: %w", err)
		}
		return body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("read body: %w", err)
	case len(body) > maxReviewBytes:
		return nil, tooLarge
	}
	return body, nil
}

// decodeReview reads an admission.k8s.io/v1 AdmissionReview. Its request's
// object, oldObject and options stay raw (RawExtension, as the API type
// keeps them); its small fields are decoded as the API server's own decoder
// does, case-sensitively with the API types' tags.
func decodeReview(body []byte) (admission.Request, error) {
	var req admission.Request
	d := jsontext.NewDecoder(bytes.NewBuffer(body), jsontext.AllowDuplicateNames(true))
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
			sawRequest = true
			req = admission.Request{}
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

func decodeRequest(d *jsontext.Decoder, body []byte, r *admissionv1.AdmissionRequest) error {
	return eachField(d, func(key string) (err error) {
		switch key {
		case "object":
			r.Object.Raw, err = rawValue(d, body)
		case "oldObject":
			r.OldObject.Raw, err = rawValue(d, body)
		case "options":
			r.Options.Raw, err = rawValue(d, body)
		case "uid":
			err = decodeValue(d, &r.UID)
		case "kind":
			err = decodeValue(d, &r.Kind)
		case "resource":
			err = decodeValue(d, &r.Resource)
		case "subResource":
			r.SubResource, err = decodeString(d)
		case "requestKind":
			err = decodeValue(d, &r.RequestKind)
		case "requestResource":
			err = decodeValue(d, &r.RequestResource)
		case "requestSubResource":
			r.RequestSubResource, err = decodeString(d)
		case "name":
			r.Name, err = decodeString(d)
		case "namespace":
			r.Namespace, err = decodeString(d)
		case "operation":
			err = decodeValue(d, &r.Operation)
		case "userInfo":
			err = decodeValue(d, &r.UserInfo)
		case "dryRun":
			err = decodeValue(d, &r.DryRun)
		default:
			return d.SkipValue()
		}
		if err != nil {
			err = fmt.Errorf("request.%s: %w", key, err)
		}
		return err
	})
}

// rawValue is the next value, checked to be well-formed JSON, as the bytes
// of body it spans (no copy: body lives as long as the request), and nil
// for null, as RawExtension.UnmarshalJSON keeps it.
func rawValue(d *jsontext.Decoder, body []byte) ([]byte, error) {
	if d.PeekKind() == 'n' {
		_, err := d.ReadToken()
		return nil, err
	}
	// After a name the input stands at its colon.
	start := d.InputOffset()
	if err := d.SkipValue(); err != nil {
		return nil, err
	}
	v := bytes.TrimLeft(body[start:d.InputOffset()], " \t\r\n")
	v = bytes.TrimLeft(bytes.TrimPrefix(v, []byte(":")), " \t\r\n")
	return v[:len(v):len(v)], nil
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
