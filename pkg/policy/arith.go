package policy

import "math"

// Arithmetic on numbers that come from users (GPU counts, watts, budget sums).
// Every operand is a count or a power, never below zero: a negative operand
// counts as zero, and a result that does not fit saturates at math.MaxInt64
// instead of wrapping. A cost or a committed sum can then only be too large,
// which a budget denies, never small or negative, which it would admit.

// SatAdd is a+b, saturating; negative operands count as zero.
func SatAdd(a, b int64) int64 {
	a, b = max(a, 0), max(b, 0)
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// SatMul is a*b, saturating; negative operands count as zero.
func SatMul(a, b int64) int64 {
	a, b = max(a, 0), max(b, 0)
	if a == 0 || b == 0 {
		return 0
	}
	if a > math.MaxInt64/b {
		return math.MaxInt64
	}
	return a * b
}

// SatSub is a-b floored at zero; negative operands count as zero.
func SatSub(a, b int64) int64 {
	return max(max(a, 0)-max(b, 0), 0)
}
