package policy_test

import (
	"math"
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestDecideReservation(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	live, expired := now.Add(time.Second), now
	held := func(watts int64, expires time.Time) *policy.HeldReservation {
		return &policy.HeldReservation{Watts: watts, Expires: expires}
	}
	budget := func(committed int64) policy.BudgetState {
		return policy.BudgetState{Name: "cluster", Total: 1000, Committed: committed}
	}
	charge := func(watts, delta int64) policy.ReservationAsk {
		return policy.ReservationAsk{Watts: watts, Delta: delta}
	}
	release := func(watts, delta int64) policy.ReservationAsk {
		return policy.ReservationAsk{Release: true, Watts: watts, Delta: delta}
	}
	for _, tt := range []struct {
		name   string
		ask    policy.ReservationAsk
		held   *policy.HeldReservation
		budget policy.BudgetState
		fresh  bool
		want   policy.ReservationDecision
	}{
		{"a new pod that fits is charged", charge(500, 500), nil, budget(500), false, policy.ReservationCharge},
		{"exactly the rest of the total fits", charge(400, 400), nil, budget(600), true, policy.ReservationCharge},
		{"a pod over the total on a cached base is decided again fresh", charge(500, 500), nil, budget(600), false, policy.ReservationReadFresh},
		{"a pod over the total on a fresh base is denied", charge(500, 500), nil, budget(600), true, policy.ReservationDeny},
		{"a raise is charged its delta only", charge(800, 300), held(500, live), budget(700), true, policy.ReservationCharge},
		{"a raise whose delta does not fit is denied", charge(800, 300), held(500, live), budget(701), true, policy.ReservationDeny},
		{"the same charge again (a lost forward answer) is already charged", charge(500, 500), held(500, live), budget(1000), true, policy.ReservationAlreadyCharged},
		{"a raise back to what the reservation holds is already charged", charge(500, 100), held(500, live), budget(1000), true, policy.ReservationAlreadyCharged},
		{"an expired reservation charges again", charge(500, 500), held(500, expired), budget(500), true, policy.ReservationCharge},
		{"an expired reservation that no longer fits is denied", charge(500, 500), held(500, expired), budget(600), true, policy.ReservationDeny},
		{"a release undoes the reservation this admission made", release(500, 500), held(500, live), budget(500), true, policy.ReservationUndo},
		{"an expired reservation is still undone", release(500, 500), held(500, expired), budget(500), false, policy.ReservationUndo},
		{"a release whose reservation was replaced by a newer one undoes nothing", release(500, 500), held(800, live), budget(800), true, policy.ReservationNothingToUndo},
		{"a release with no reservation undoes nothing", release(500, 500), nil, budget(0), true, policy.ReservationNothingToUndo},
		{"a release is never denied, even over the total", release(500, 500), held(500, live), budget(2000), true, policy.ReservationUndo},
		{"a status with committed below zero fits nothing", charge(1, 1), nil, budget(-5), true, policy.ReservationDeny},
		{"a delta that would wrap committed fits nothing", charge(math.MaxInt64, math.MaxInt64), nil, budget(10), true, policy.ReservationDeny},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := policy.DecideReservation(tt.ask, tt.held, tt.budget, tt.fresh, now); got != tt.want {
				t.Errorf("DecideReservation(%+v, %+v, %+v, fresh %v) = %d; want %d", tt.ask, tt.held, tt.budget, tt.fresh, got, tt.want)
			}
		})
	}
}
