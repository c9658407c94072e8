package policy_test

import (
	"strings"
	"testing"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestDefaultRules(t *testing.T) {
	var rules []policy.DefaultRule
	for _, s := range []string{"role=decode=250", "tier in (gold,silver)=300", "=400"} {
		r, err := policy.ParseDefaultRule(s)
		if err != nil {
			t.Fatalf("ParseDefaultRule(%q): %v", s, err)
		}
		rules = append(rules, r)
	}
	tests := []struct {
		name   string
		labels map[string]string
		want   policy.Watts
	}{
		{"first matching rule wins", map[string]string{"role": "decode", "tier": "gold"}, 250},
		{"set-based selector", map[string]string{"tier": "silver"}, 300},
		{"empty selector matches every pod", nil, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, ok := policy.FirstDefault(rules, tt.labels)
			if !ok || r.Watts != tt.want {
				t.Errorf("FirstDefault = %d, %v; want %d", r.Watts, ok, tt.want)
			}
		})
	}
	if _, ok := policy.FirstDefault(rules[:2], map[string]string{"role": "prefill"}); ok {
		t.Error("a pod no rule selects got a default")
	}
}

func TestParseDefaultRuleErrors(t *testing.T) {
	tests := []struct{ rule, want string }{
		{"role=decode", `default rule "role=decode": watts "decode" must be a positive whole number`},
		{"250", `default rule "250": want selector=watts`},
		{"role in (a=250", `default rule "role in (a=250": selector:`},
		{"role=decode=250W", `watts "250W" must be`},
	}
	for _, tt := range tests {
		_, err := policy.ParseDefaultRule(tt.rule)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseDefaultRule(%q) error = %v; want it to contain %q", tt.rule, err, tt.want)
		}
	}
}
