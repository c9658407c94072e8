package webhook

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	sigsjson "sigs.k8s.io/json"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// decodePod reads the parts of a pod that power policy looks at: identity, labels, annotations,
// node name, node selector, affinity, resource claims, and each container's
// name, NVIDIA resources and restart policy. Everything else (env, volumes,
// probes: most of a real pod's bytes) is skipped by a streaming tokenizer
// without being decoded, yet still checked to be well-formed JSON. That keeps
// the admission of a large pod in the tens of microseconds.
func decodePod(raw []byte) (*corev1.Pod, error) {
	if len(raw) == 0 {
		return nil, errors.New("empty object")
	}
	pod := &corev1.Pod{}
	d := decoderFor(raw)
	defer release(d)
	if d.PeekKind() != '{' {
		return nil, errors.New("not a JSON object")
	}
	err := eachField(d, func(key string) error {
		switch key {
		case "metadata":
			return decodeMetadata(d, &pod.ObjectMeta)
		case "spec":
			return decodeSpec(d, &pod.Spec)
		}
		return d.SkipValue()
	})
	if err != nil {
		return nil, err
	}
	if _, err := d.ReadToken(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the object")
	}
	return pod, nil
}

// noInput is what a released decoder reads: nothing, and nothing to allocate.
type noInput struct{}

func (noInput) Read([]byte) (int, error) { return 0, io.EOF }

// decoders are reused: a decoder's state is a few kilobytes, allocated for
// every object otherwise (two or three an admission).
var decoders = sync.Pool{New: func() any { return new(jsontext.Decoder) }}

// decoderFor returns a pooled decoder reading raw; release it when done.
// A bytes.Buffer is parsed in place, without a copy. Duplicate keys are not
// looked for: the API server wrote this JSON from a decoded object.
func decoderFor(raw []byte) *jsontext.Decoder {
	d := decoders.Get().(*jsontext.Decoder)
	d.Reset(bytes.NewBuffer(raw), jsontext.AllowDuplicateNames(true))
	return d
}

// release returns d to the pool, holding no reference to what it read.
func release(d *jsontext.Decoder) {
	d.Reset(noInput{})
	decoders.Put(d)
}

func decodeMetadata(d *jsontext.Decoder, m *metav1.ObjectMeta) error {
	return eachField(d, func(key string) (err error) {
		switch key {
		case "name":
			m.Name, err = decodeString(d)
		case "generateName":
			m.GenerateName, err = decodeString(d)
		case "namespace":
			m.Namespace, err = decodeString(d)
		case "uid":
			var uid string
			uid, err = decodeString(d)
			m.UID = types.UID(uid)
		case "labels":
			m.Labels, err = decodeStringMap(d)
		case "annotations":
			m.Annotations, err = decodeStringMap(d)
		default:
			return d.SkipValue()
		}
		if err != nil {
			err = fmt.Errorf("metadata.%s: %w", key, err)
		}
		return err
	})
}

func decodeSpec(d *jsontext.Decoder, s *corev1.PodSpec) error {
	return eachField(d, func(key string) (err error) {
		switch key {
		case "nodeName":
			err = decodeValue(d, &s.NodeName)
		case "nodeSelector":
			s.NodeSelector, err = decodeStringMap(d)
		case "affinity":
			err = decodeValue(d, &s.Affinity)
		case "resourceClaims":
			err = decodeValue(d, &s.ResourceClaims)
		case "containers":
			s.Containers, err = decodeContainers(d)
		case "initContainers":
			s.InitContainers, err = decodeContainers(d)
		default:
			return d.SkipValue()
		}
		if err != nil {
			err = fmt.Errorf("spec.%s: %w", key, err)
		}
		return err
	})
}

func decodeContainers(d *jsontext.Decoder) ([]corev1.Container, error) {
	switch d.PeekKind() {
	case 'n':
		_, err := d.ReadToken()
		return nil, err
	case '[':
	default:
		return nil, errors.New("not a list")
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	// Grown as containers come: a Container is 408 bytes, and most pods have one.
	var out []corev1.Container
	for d.PeekKind() != ']' {
		out = append(out, corev1.Container{})
		c := &out[len(out)-1]
		err := eachField(d, func(key string) error {
			switch key {
			case "name":
				return decodeValue(d, &c.Name)
			case "restartPolicy":
				return decodeValue(d, &c.RestartPolicy)
			case "resources":
				return eachField(d, func(key string) (err error) {
					switch key {
					case "requests":
						c.Resources.Requests, err = decodeNVIDIAResources(d)
					case "limits":
						c.Resources.Limits, err = decodeNVIDIAResources(d)
					default:
						err = d.SkipValue()
					}
					return err
				})
			}
			return d.SkipValue()
		})
		if err != nil {
			return nil, err
		}
	}
	_, err := d.ReadToken() // ']'
	return out, err
}

// maxQuantityLen bounds a quantity string before it is parsed: the longest
// an integer count the API server accepts can usefully be is 19 digits, and
// a hostile caller's megabyte of digits is refused before any arithmetic.
const maxQuantityLen = 64

// decodeNVIDIAResources keeps the entries of a resource list that power
// policy reads (policy.ReadsResource): the extended ones.
func decodeNVIDIAResources(d *jsontext.Decoder) (corev1.ResourceList, error) {
	var out corev1.ResourceList
	err := eachField(d, func(name string) error {
		if !policy.ReadsResource(name) {
			return d.SkipValue()
		}
		tok, err := d.ReadToken()
		if err != nil {
			return err
		}
		var q resource.Quantity
		switch kind, text := tok.Kind(), tok.String(); {
		case kind != '"' && kind != '0':
			err = errors.New("not a quantity")
		case len(text) > maxQuantityLen:
			err = fmt.Errorf("a quantity of %d characters; at most %d are read", len(text), maxQuantityLen)
		default:
			q, err = resource.ParseQuantity(text)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if out == nil {
			out = corev1.ResourceList{}
		}
		out[corev1.ResourceName(name)] = q
		return nil
	})
	return out, err
}

func decodeString(d *jsontext.Decoder) (string, error) {
	tok, err := d.ReadToken()
	if err != nil {
		return "", err
	}
	switch tok.Kind() {
	case '"':
		return tok.String(), nil
	case 'n':
		return "", nil
	}
	return "", fmt.Errorf("want a string, got %v", tok.Kind())
}

func decodeStringMap(d *jsontext.Decoder) (map[string]string, error) {
	var m map[string]string
	err := eachField(d, func(key string) error {
		v, err := decodeString(d)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		if m == nil {
			m = map[string]string{}
		}
		m[key] = v
		return nil
	})
	return m, err
}

// eachField reads an object (or null), calling field with each key while the
// decoder stands on that key's value; field must consume the value.
func eachField(d *jsontext.Decoder, field func(key string) error) error {
	tok, err := d.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case 'n':
		return nil
	case '{':
	default:
		return fmt.Errorf("want an object, got %v", tok.Kind())
	}
	for d.PeekKind() != '}' {
		name, err := d.ReadValue()
		if err != nil {
			return err
		}
		key, err := keyOf(name)
		if err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
	}
	_, err = d.ReadToken()
	return err
}

// fieldNames interns the JSON field names of the types read here, and the
// resource names policy reads most: read as a token, each key was a new
// string, a third of an admission's allocations.
var fieldNames = internedNames([]string{policy.ResourceGPU, string(corev1.ResourceCPU), string(corev1.ResourceMemory)},
	reflect.TypeFor[admissionv1.AdmissionReview](), reflect.TypeFor[corev1.Pod]())

// internedNames maps each JSON field name of the types, and of every type
// they hold, to itself, with the extra names.
func internedNames(extra []string, types ...reflect.Type) map[string]string {
	names := map[string]string{}
	for _, n := range extra {
		names[n] = n
	}
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(t reflect.Type) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Map {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || seen[t] {
			return
		}
		seen[t] = true
		for i := range t.NumField() {
			f := t.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
				names[name] = name
			}
			walk(f.Type)
		}
	}
	for _, t := range types {
		walk(t)
	}
	return names
}

// keyOf is an object name's string: interned when it is a known one written
// without escapes (the API server writes none), unquoted otherwise.
func keyOf(name jsontext.Value) (string, error) {
	if len(name) >= 2 && name[0] == '"' && bytes.IndexByte(name, '\\') < 0 {
		inner := name[1 : len(name)-1]
		if key, ok := fieldNames[string(inner)]; ok {
			return key, nil
		}
		return string(inner), nil
	}
	key, err := jsontext.AppendUnquote(nil, name)
	return string(key), err
}

// decodeValue decodes the next value the way the API server does: with the
// API types' JSON tags, case-sensitively.
func decodeValue(d *jsontext.Decoder, into any) error {
	v, err := d.ReadValue()
	if err != nil {
		return err
	}
	return sigsjson.UnmarshalCaseSensitivePreserveInts(v, into)
}
