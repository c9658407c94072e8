package policy

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Watts is a power in whole watts, the unit of the annotation.
type Watts int64

// maxLimitDigits bounds the annotation: 999999 W is far above any board, and a
// bound keeps arithmetic on costs far from overflow.
const maxLimitDigits = 6

// limitGrammar is the one accepted spelling, quoted in every syntax denial.
const limitGrammar = `must be a positive whole number of watts per GPU written with digits only ` +
	`(no sign, unit, decimal point, separator or leading zero, at most 6 digits), for example "250"`

// ParseLimit reads an annotation value. Only the canonical spelling is accepted
// (`^[1-9][0-9]{0,5}$`): the webhook never rewrites what a planner wrote, so
// anything else is denied with the spelling to use instead.
func ParseLimit(value string) (Watts, bool) {
	if len(value) == 0 || len(value) > maxLimitDigits || value[0] == '0' {
		return 0, false
	}
	var w Watts
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		w = w*10 + Watts(c-'0')
	}
	return w, true
}

// ValidateLimitSyntax parses value and, when it is not canonical, returns the
// denial: the value as written, the grammar and, where one can be derived, the
// canonical spelling the planner most likely meant.
func ValidateLimitSyntax(path *field.Path, value string) (Watts, *field.Error) {
	if w, ok := ParseLimit(value); ok {
		return w, nil
	}
	detail := limitGrammar
	if s, ok := suggestLimit(value); ok {
		detail += fmt.Sprintf("; write %q", s)
	}
	return 0, invalidValue(path, value, detail)
}

// suggestLimit recovers the canonical spelling of common near misses:
// " 250", "+250", "250W", "250 watts", "250.0", "1_000", "0250", full-width digits.
func suggestLimit(value string) (string, bool) {
	if len(value) > 64 {
		return "", false
	}
	s := strings.Map(func(r rune) rune {
		switch {
		case r >= '０' && r <= '９':
			return '0' + (r - '０')
		case r == '_' || r == ',':
			return -1
		}
		return r
	}, value)
	s = strings.TrimSpace(s)
	lower := strings.ToLower(s)
	for _, unit := range []string{"watts", "watt", "w"} {
		if strings.HasSuffix(lower, unit) {
			s = strings.TrimSpace(s[:len(s)-len(unit)])
			break
		}
	}
	s = strings.TrimPrefix(s, "+")
	if whole, frac, ok := strings.Cut(s, "."); ok {
		if strings.Trim(frac, "0") != "" {
			return "", false
		}
		s = whole
	}
	s = strings.TrimLeft(s, "0")
	if _, ok := ParseLimit(s); !ok || s == value {
		return "", false
	}
	return s, true
}

// invalidValue is field.Invalid that never copies a huge value into the
// message: long values are shown truncated, with their length.
func invalidValue(path *field.Path, value, detail string) *field.Error {
	const shown = 40
	if len(value) <= shown {
		return field.Invalid(path, value, detail)
	}
	cut := shown
	for cut > 0 && !utf8.RuneStart(value[cut]) {
		cut--
	}
	return &field.Error{
		Type:     field.ErrorTypeInvalid,
		Field:    path.String(),
		BadValue: field.OmitValueType{},
		Detail:   strconv.Quote(value[:cut]+"…") + fmt.Sprintf(" (%d bytes, truncated): ", len(value)) + detail,
	}
}

// String renders w the way the annotation spells it.
func (w Watts) String() string { return strconv.FormatInt(int64(w), 10) }
