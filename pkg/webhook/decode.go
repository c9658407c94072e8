package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/tidwall/gjson"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// decodePod reads the parts of a pod that power policy looks at: identity,
// labels, annotations, node name, node selector and affinity, and each
// container's resources and restart policy. Everything else (env, volumes,
// probes: most of a real pod's bytes) is skipped without being decoded, which
// keeps an admission of a large pod in the tens of microseconds.
func decodePod(raw []byte) (*corev1.Pod, error) {
	if len(raw) == 0 {
		return nil, errors.New("empty object")
	}
	// The request body is neither modified nor kept past this call, so the
	// results may point into it instead of a 25 kB copy.
	text := unsafe.String(&raw[0], len(raw))
	if !gjson.Valid(text) {
		return nil, errors.New("object is not valid JSON")
	}
	doc := gjson.Parse(text)
	if !doc.IsObject() {
		return nil, errors.New("object is not a JSON object")
	}
	pod := &corev1.Pod{}
	if m := doc.Get("metadata"); m.Exists() {
		if err := json.Unmarshal([]byte(m.Raw), &pod.ObjectMeta); err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
	}
	var err error
	doc.Get("spec").ForEach(func(key, value gjson.Result) bool {
		s := &pod.Spec
		switch key.Str {
		case "nodeName":
			err = unmarshal(value, &s.NodeName)
		case "nodeSelector":
			err = unmarshal(value, &s.NodeSelector)
		case "affinity":
			err = unmarshal(value, &s.Affinity)
		case "resourceClaims":
			err = unmarshal(value, &s.ResourceClaims)
		case "containers":
			s.Containers, err = decodeContainers(value)
		case "initContainers":
			s.InitContainers, err = decodeContainers(value)
		}
		if err != nil {
			err = fmt.Errorf("spec.%s: %w", key.Str, err)
		}
		return err == nil
	})
	return pod, err
}

func decodeContainers(list gjson.Result) ([]corev1.Container, error) {
	if !list.IsArray() {
		if list.Type == gjson.Null {
			return nil, nil
		}
		return nil, errors.New("not a list")
	}
	out := make([]corev1.Container, 0, 8)
	var err error
	list.ForEach(func(_, c gjson.Result) bool {
		out = append(out, corev1.Container{})
		ct := &out[len(out)-1]
		c.ForEach(func(key, value gjson.Result) bool {
			switch key.Str {
			case "name":
				ct.Name = value.Str
			case "resources":
				ct.Resources.Requests, err = decodeGPUResources(value.Get("requests"))
				if err == nil {
					ct.Resources.Limits, err = decodeGPUResources(value.Get("limits"))
				}
			case "restartPolicy":
				err = unmarshal(value, &ct.RestartPolicy)
			}
			return err == nil
		})
		return err == nil
	})
	return out, err
}

// decodeGPUResources keeps the NVIDIA entries of a resource list: the only
// resources power policy reads.
func decodeGPUResources(list gjson.Result) (corev1.ResourceList, error) {
	var out corev1.ResourceList
	var err error
	list.ForEach(func(name, value gjson.Result) bool {
		if !strings.HasPrefix(name.Str, "nvidia.com/") {
			return true
		}
		var q resource.Quantity
		if q, err = resource.ParseQuantity(value.String()); err != nil {
			err = fmt.Errorf("%s: %w", name.Str, err)
			return false
		}
		if out == nil {
			out = corev1.ResourceList{}
		}
		out[corev1.ResourceName(name.Str)] = q
		return true
	})
	return out, err
}

func unmarshal(v gjson.Result, into any) error {
	return json.Unmarshal([]byte(v.Raw), into)
}
