package policy

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// DefaultRule gives GPU pods that carry no limit a default one.
type DefaultRule struct {
	// Selector picks the pods, by their labels.
	Selector labels.Selector
	// Watts is the per-GPU limit they get.
	Watts Watts
	// Origin names the rule in messages: the flag as written, or the budget.
	Origin string
}

// ParseDefaultRule reads the --default-rule form "selector=watts", where
// selector uses label selector syntax ("role=decode", "tier in (gold)", or
// nothing for every pod). The watts follow the last '='.
func ParseDefaultRule(s string) (DefaultRule, error) {
	i := strings.LastIndexByte(s, '=')
	if i < 0 {
		return DefaultRule{}, fmt.Errorf("default rule %q: want selector=watts, for example role=decode=250", s)
	}
	sel, err := labels.Parse(s[:i])
	if err != nil {
		return DefaultRule{}, fmt.Errorf("default rule %q: selector: %w", s, err)
	}
	w, ok := ParseLimit(s[i+1:])
	if !ok {
		return DefaultRule{}, fmt.Errorf("default rule %q: watts %q %s", s, s[i+1:], limitGrammar)
	}
	return DefaultRule{Selector: sel, Watts: w, Origin: s}, nil
}

// FirstDefault returns the first rule whose selector matches the pod labels.
func FirstDefault(rules []DefaultRule, podLabels map[string]string) (DefaultRule, bool) {
	set := labels.Set(podLabels)
	for _, r := range rules {
		if r.Selector.Matches(set) {
			return r, true
		}
	}
	return DefaultRule{}, false
}
