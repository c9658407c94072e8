package policy_test

import (
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func holder(pod, limit, stamp string) policy.Holder {
	return policy.Holder{Pod: "llm/" + pod, UID: types.UID("uid-" + pod), Limit: limit, Stamp: stamp, HasLimit: limit != "", HasStamp: stamp != ""}
}

func TestResolveGPU(t *testing.T) {
	tests := []struct {
		name        string
		holders     []policy.Holder
		require     bool
		cap         policy.Watts
		conflict    bool
		deciding    int
		unvalidated int
		invalid     int
		unlimited   int
	}{
		{"nobody holds it", nil, true, 0, false, 0, 0, 0, 0},
		{"one validated pod", []policy.Holder{holder("a", "250", "250")}, true, 250, false, 1, 0, 0, 0},
		{"shared GPU, two limits: lowest wins", []policy.Holder{holder("a", "300", "300"), holder("b", "250", "250")}, true, 250, true, 2, 0, 0, 0},
		{"shared GPU, same limit: no conflict", []policy.Holder{holder("a", "250", "250"), holder("b", "250", "250")}, true, 250, false, 2, 0, 0, 0},
		{"unstamped limit ignored when validation is required", []policy.Holder{holder("a", "250", "")}, true, 0, false, 0, 1, 0, 0},
		{"stamp differs from limit: ignored", []policy.Holder{holder("a", "250", "300")}, true, 0, false, 0, 1, 0, 0},
		{"unstamped limit counts when validation is off", []policy.Holder{holder("a", "250", "")}, false, 250, false, 1, 0, 0, 0},
		{"malformed limit never counts", []policy.Holder{holder("a", "250W", "250W")}, false, 0, false, 0, 0, 1, 0},
		{"unlimited co-tenant on a capped GPU", []policy.Holder{holder("a", "250", "250"), holder("b", "", "")}, true, 250, false, 1, 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := policy.ResolveGPU(tt.holders, tt.require)
			if d.Cap != tt.cap || d.Conflict != tt.conflict || len(d.Deciding) != tt.deciding ||
				len(d.NotValidated) != tt.unvalidated || len(d.Invalid) != tt.invalid || len(d.Unlimited) != tt.unlimited {
				t.Errorf("ResolveGPU = %+v", d)
			}
		})
	}
}

func TestClamp(t *testing.T) {
	for _, tt := range []struct {
		limit, want policy.Milliwatts
		clamped     bool
	}{
		{250_000, 250_000, false}, {150_000, 200_000, true}, {900_000, 700_000, true}, {200_000, 200_000, false}, {700_000, 700_000, false},
	} {
		if got, c := policy.Clamp(tt.limit, 200_000, 700_000); got != tt.want || c != tt.clamped {
			t.Errorf("Clamp(%d) = %d, %v; want %d, %v", tt.limit, got, c, tt.want, tt.clamped)
		}
	}
}
