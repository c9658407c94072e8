package policy

import "time"

// ReservationAsk is one pod's request to a budget's ledger.
type ReservationAsk struct {
	// Release undoes the reservation this admission made, because another
	// budget denied the pod.
	Release bool
	// Watts is the pod's whole cost, as its reservation records it.
	Watts int64
	// Delta is what committed watts grow by: the cost, or a raise.
	Delta int64
}

// HeldReservation is the reservation a budget already holds for the pod.
type HeldReservation struct {
	Watts   int64
	Expires time.Time
}

// ReservationDecision is what the ledger does with one ask.
type ReservationDecision int

const (
	// ReservationUndo puts the pod's reservation back to what it was before
	// this admission and takes the delta off committed watts.
	ReservationUndo ReservationDecision = iota + 1
	// ReservationNothingToUndo means the reservation to release is gone, or a
	// newer one of the same pod replaced it (which stays, counted in full).
	ReservationNothingToUndo
	// ReservationAlreadyCharged means the pod's unexpired reservation holds at
	// least the cost (a forwarded ask whose answer was lost and that came again, or a
	// raise back to what the reservation still holds). It is admitted and
	// renewed, so the pod about to be stored is not released before the
	// cache shows it.
	ReservationAlreadyCharged
	// ReservationCharge means the delta fits: the reservation is written and committed grows.
	ReservationCharge
	// ReservationDeny means the delta does not fit a budget read fresh from the API server.
	ReservationDeny
	// ReservationReadFresh means the delta does not fit, but the budget was not read fresh
	// (it may predate a release by the reconciler): decide again on what
	// the API server holds before denying.
	ReservationReadFresh
)

// DecideReservation decides one ask against the budget as its batch has it
// so far. held is the pod's reservation in the budget (nil: none); fresh
// reports whether the budget was read from the API server for this batch.
func DecideReservation(ask ReservationAsk, held *HeldReservation, budget BudgetState, fresh bool, now time.Time) ReservationDecision {
	switch {
	case ask.Release && held != nil && held.Watts == ask.Watts:
		return ReservationUndo
	case ask.Release:
		return ReservationNothingToUndo
	case held != nil && held.Watts >= ask.Watts && now.Before(held.Expires):
		return ReservationAlreadyCharged
	case budget.Fits(ask.Delta):
		return ReservationCharge
	case fresh:
		return ReservationDeny
	}
	return ReservationReadFresh
}
