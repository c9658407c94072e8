package policy

import (
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// Holder is a pod that holds a GPU, as the agent sees it.
type Holder struct {
	// Pod is namespace/name.
	Pod string
	UID types.UID
	// Annotations are the pod's power annotations.
	Limit, Stamp       string
	HasLimit, HasStamp bool
}

// GPUDecision is what a GPU's holders ask of it.
type GPUDecision struct {
	// Cap is the lowest enforceable per-GPU limit among the holders, in
	// watts; 0 when no holder asks for one.
	Cap Watts
	// Deciding are the holders whose limit counts, sorted by pod.
	Deciding []Holder
	// Conflict is set when deciding holders ask for different limits: the
	// lowest wins, and each of them should hear about it.
	Conflict bool
	// NotValidated hold a limit the webhook did not stamp (stamp != limit)
	// while validation is required: their limit is ignored.
	NotValidated []Holder
	// Invalid hold a limit that does not parse: ignored.
	Invalid []Holder
	// Unlimited hold the GPU without any limit: on a capped GPU they are
	// capped too, and should be warned.
	Unlimited []Holder
}

// ResolveGPU decides the cap of one GPU from the pods holding it. Only a
// limit the webhook validated (stamp == limit) counts, unless
// requireValidation is off, in which case any well-formed limit counts.
// Several different limits: the lowest, since every pod on the GPU asked for
// at most its own value.
func ResolveGPU(holders []Holder, requireValidation bool) GPUDecision {
	var d GPUDecision
	var values []Watts
	for _, h := range holders {
		if !h.HasLimit {
			d.Unlimited = append(d.Unlimited, h)
			continue
		}
		w, ok := ParseLimit(h.Limit)
		switch {
		case !ok:
			d.Invalid = append(d.Invalid, h)
		case requireValidation && (!h.HasStamp || h.Stamp != h.Limit):
			d.NotValidated = append(d.NotValidated, h)
		default:
			d.Deciding = append(d.Deciding, h)
			values = append(values, w)
		}
	}
	if len(values) > 0 {
		d.Cap = slices.Min(values)
		d.Conflict = slices.Max(values) != d.Cap
	}
	byPod := func(a, b Holder) int { return strings.Compare(a.Pod, b.Pod) }
	for _, list := range [][]Holder{d.Deciding, d.NotValidated, d.Invalid, d.Unlimited} {
		slices.SortFunc(list, byPod)
	}
	return d
}

// Clamp fits a limit into a GPU's settable range, reporting whether it had to.
func Clamp(limit, lo, hi Milliwatts) (Milliwatts, bool) {
	switch {
	case limit < lo:
		return lo, true
	case limit > hi:
		return hi, true
	}
	return limit, false
}
