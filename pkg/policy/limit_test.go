package policy

import (
	"strings"
	"testing"
)

func TestParseLimit(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  Watts
		ok    bool
	}{
		{"canonical", "250", 250, true},
		{"one watt", "1", 1, true},
		{"six digits is the most", "999999", 999999, true},
		{"seven digits", "1000000", 0, false},
		{"empty", "", 0, false},
		{"zero", "0", 0, false},
		{"negative", "-5", 0, false},
		{"plus sign", "+250", 0, false},
		{"leading space", " 250", 0, false},
		{"trailing space", "250 ", 0, false},
		{"unit", "250W", 0, false},
		{"decimal", "250.0", 0, false},
		{"separator", "1_000", 0, false},
		{"leading zero", "0250", 0, false},
		{"full-width digits", "２５０", 0, false},
		{"hex", "0xfa", 0, false},
		{"huge", strings.Repeat("9", 100_000), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseLimit(tt.value)
			if got != tt.want || ok != tt.ok {
				t.Errorf("ParseLimit(%q) = %d, %v; want %d, %v", tt.value, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestValidateLimitSyntaxMessages(t *testing.T) {
	const grammar = `must be a positive whole number of watts per GPU written with digits only ` +
		`(no sign, unit, decimal point, separator or leading zero, at most 6 digits), for example "250"`
	prefix := "metadata.annotations[dynamo.nvidia.com/gpu-power-limit]: Invalid value: "
	tests := []struct {
		name  string
		value string
		want  string
	}{
		{"empty", "", prefix + `"": ` + grammar},
		{"zero", "0", prefix + `"0": ` + grammar},
		{"negative", "-5", prefix + `"-5": ` + grammar},
		{"plus sign", "+250", prefix + `"+250": ` + grammar + `; write "250"`},
		{"leading space", " 250", prefix + `" 250": ` + grammar + `; write "250"`},
		{"unit", "250W", prefix + `"250W": ` + grammar + `; write "250"`},
		{"unit in words", "250 watts", prefix + `"250 watts": ` + grammar + `; write "250"`},
		{"decimal zero", "250.0", prefix + `"250.0": ` + grammar + `; write "250"`},
		{"real fraction has no canonical form", "250.5", prefix + `"250.5": ` + grammar},
		{"separator", "1_000", prefix + `"1_000": ` + grammar + `; write "1000"`},
		{"leading zero", "0250", prefix + `"0250": ` + grammar + `; write "250"`},
		{"full-width digits", "２５０", prefix + `"２５０": ` + grammar + `; write "250"`},
		{"too many digits", "1000000", prefix + `"1000000": ` + grammar},
		{"huge value is truncated", strings.Repeat("x", 100_000),
			prefix + `"` + strings.Repeat("x", 40) + `…" (100000 bytes, truncated): ` + grammar},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ValidateLimitSyntax(LimitPath, tt.value)
			if err == nil {
				t.Fatalf("ValidateLimitSyntax(%q) accepted the value", tt.value)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("denial\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

func FuzzParseLimit(f *testing.F) {
	for _, seed := range []string{"", "0", "-5", "+250", " 250", "250W", "250.0", "1_000", "0250", "２５０", "250", "999999", "\xff"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		w, err := ValidateLimitSyntax(LimitPath, value)
		if err != nil {
			if err.Detail == "" || !strings.Contains(err.Error(), "for example \"250\"") {
				t.Fatalf("denial of %q has no usable message: %v", value, err)
			}
			if len(err.Error()) > 512 {
				t.Fatalf("denial of %q is %d bytes long", value, len(err.Error()))
			}
			if s, ok := suggestLimit(value); ok {
				if _, valid := ParseLimit(s); !valid {
					t.Fatalf("suggestion %q for %q is not canonical", s, value)
				}
			}
			return
		}
		if w <= 0 || w.String() != value {
			t.Fatalf("accepted %q as %d, which does not round-trip", value, w)
		}
	})
}
