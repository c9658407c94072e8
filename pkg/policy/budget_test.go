package policy_test

import (
	"math"
	"math/big"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/policy"
)

func TestCostOf(t *testing.T) {
	cluster := fakeCluster{"h100-0": h100, "l4-0": l4}
	catalog := policy.DefaultCatalog()
	tests := []struct {
		name      string
		pod       *corev1.Pod
		count     bool
		watts     int64
		gpus      int64
		unlimited bool
		text      string
	}{
		{"limit x GPUs", pod().GPU(4).Limit("250").Obj(), true, 1000, 4, false, "1000 W (4 GPUs x 250 W)"},
		{"one GPU", pod().GPU(1).Limit("300").Obj(), true, 300, 1, false, "300 W (1 GPU x 300 W)"},
		{"no GPUs costs nothing", pod().Limit("300").Obj(), true, 0, 0, false, ""},
		{"unlimited pod on a node costs its board default", pod().GPU(2).NodeName("h100-0").Obj(), true, 1400, 2, true,
			"1400 W (2 GPUs x 700 W default board limit, no power limit set)"},
		{"unlimited unpinned pod costs the highest default it can land on", pod().GPU(1).Obj(), true, 700, 1, true, ""},
		{"unlimited pod on L4", pod().GPU(1).Product(l4).Obj(), true, 72, 1, true, ""},
		{"unlimited pods ignored", pod().GPU(2).NodeName("h100-0").Obj(), false, 0, 2, true, ""},
		{"an invalid limit counts as none", pod().GPU(1).NodeName("h100-0").Limit("250W").Obj(), true, 700, 1, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := catalog.CostOf(tt.pod, cluster, tt.count)
			if c.Watts != tt.watts || c.GPUs != tt.gpus || c.Unlimited != tt.unlimited {
				t.Errorf("CostOf = %+v; want %d W, %d GPUs, unlimited %v", c, tt.watts, tt.gpus, tt.unlimited)
			}
			if tt.text != "" && c.String() != tt.text {
				t.Errorf("String() = %q; want %q", c.String(), tt.text)
			}
		})
	}
}

func TestBudgetDenial(t *testing.T) {
	cost := policy.Cost{Watts: 1000, GPUs: 4, PerGPU: 250}
	got := policy.BudgetDenial(cost, 1000, []policy.BudgetState{{Name: "cluster", Total: 2000, Committed: 1500}})
	want := `exceeded GPU power budget "cluster": requested 1000 W (4 GPUs x 250 W), committed 1500 W of 2000 W, available 500 W; ` +
		`lower the per-GPU limit, use fewer GPUs, or ask for a larger budget`
	if got != want {
		t.Errorf("denial\n got: %s\nwant: %s", got, want)
	}
	raise := policy.BudgetDenial(policy.Cost{Watts: 1200, GPUs: 2, PerGPU: 600}, 400,
		[]policy.BudgetState{{Name: "org", Total: 1000, Committed: 800}, {Name: "team", Total: 500, Committed: 900}})
	want = `exceeded GPU power budget "org": requested 400 W more (now 1200 W (2 GPUs x 600 W)), committed 800 W of 1000 W, available 200 W; ` +
		`exceeded GPU power budget "team": requested 400 W more (now 1200 W (2 GPUs x 600 W)), committed 900 W of 500 W, available 0 W; ` +
		`lower the per-GPU limit, use fewer GPUs, or ask for a larger budget`
	if raise != want {
		t.Errorf("raise denial\n got: %s\nwant: %s", raise, want)
	}
}

func TestCountCommitted(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	later, earlier := now.Add(time.Minute), now.Add(-time.Second)
	tests := []struct {
		name         string
		live         []policy.Charge
		reservations []policy.Reservation
		watts        int64
		pods, gpus   int64
		kept         []types.UID
	}{
		{"live pods add up", []policy.Charge{{UID: "a", Watts: 500, GPUs: 2}, {UID: "b", Watts: 250, GPUs: 1}}, nil, 750, 2, 3, nil},
		{"reservation of a pod not yet seen counts", []policy.Charge{{UID: "a", Watts: 500, GPUs: 2}},
			[]policy.Reservation{{UID: "b", Watts: 250, Expires: later}}, 750, 1, 2, []types.UID{"b"}},
		{"reservation of a seen pod is dropped, not counted twice", []policy.Charge{{UID: "a", Watts: 500, GPUs: 2}},
			[]policy.Reservation{{UID: "a", Watts: 500, Expires: later}}, 500, 1, 2, nil},
		{"expired reservation stops counting", nil, []policy.Reservation{{UID: "gone", Watts: 250, Expires: earlier}}, 0, 0, 0, nil},
		{"reservation expiring exactly now has expired", nil, []policy.Reservation{{UID: "x", Watts: 250, Expires: now}}, 0, 0, 0, nil},
		{"admitted raise counts before the cache shows it", []policy.Charge{{UID: "a", Watts: 500, GPUs: 2}},
			[]policy.Reservation{{UID: "a", Watts: 800, Expires: later}}, 800, 1, 2, []types.UID{"a"}},
		{"expired raise falls back to the live cost", []policy.Charge{{UID: "a", Watts: 500, GPUs: 2}},
			[]policy.Reservation{{UID: "a", Watts: 800, Expires: earlier}}, 500, 1, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := policy.CountCommitted(tt.live, tt.reservations, now)
			if c.Watts != tt.watts || c.Pods != tt.pods || c.GPUs != tt.gpus || len(c.Kept) != len(tt.kept) {
				t.Fatalf("CountCommitted = %+v; want %d W, %d pods, %d GPUs, kept %v", c, tt.watts, tt.pods, tt.gpus, tt.kept)
			}
			for i := range tt.kept {
				if c.Kept[i] != tt.kept[i] {
					t.Errorf("kept %v; want %v", c.Kept, tt.kept)
				}
			}
		})
	}
}

func TestBudgetDefaultsComeBeforeFlagDefaults(t *testing.T) {
	a := newAdmission(t, "=450")
	budgetRule, err := policy.ParseDefaultRule("role=decode=300")
	if err != nil {
		t.Fatal(err)
	}
	cluster := fakeCluster{"h100-0": h100}
	if v := a.Mutate("CREATE", testpod.MakePod("d", "ns").GPU(1).Label("role", "decode").Obj(), nil, cluster, []policy.DefaultRule{budgetRule}, policy.ClaimsDemand{}); v.Limit != "300" {
		t.Errorf("budget default: limit %q; want 300", v.Limit)
	}
	if v := a.Mutate("CREATE", testpod.MakePod("p", "ns").GPU(1).Label("role", "prefill").Obj(), nil, cluster, []policy.DefaultRule{budgetRule}, policy.ClaimsDemand{}); v.Limit != "450" {
		t.Errorf("flag default when no budget rule matches: limit %q; want 450", v.Limit)
	}
}

// FuzzCostArithmetic: whatever GPU count and limit a pod carries, its cost
// is never negative, grows with GPUs and with watts, and a budget's Fits and
// CountCommitted agree with exact arithmetic: nothing wraps.
func FuzzCostArithmetic(f *testing.F) {
	f.Add(int64(4), int64(250), int64(1), int64(1400), int64(0))
	f.Add(int64(20e15), int64(700), int64(1), int64(5600), int64(5600))
	f.Add(int64(math.MaxInt64), int64(999999), int64(math.MaxInt64), int64(1e9), int64(math.MaxInt64))
	f.Add(int64(-5), int64(1), int64(-1), int64(1), int64(-1))
	catalog := policy.DefaultCatalog()
	cluster := fakeCluster{"h100-0": h100}
	costOf := func(gpus, watts int64) policy.Cost {
		p := pod().Quantity(0, policy.ResourceGPU, strconv.FormatInt(gpus, 10)).NodeName("h100-0")
		if watts > 0 {
			p.Limit(strconv.FormatInt(watts, 10))
		}
		return catalog.CostOf(p.Obj(), cluster, true)
	}
	f.Fuzz(func(t *testing.T, gpus, watts, more, total, committed int64) {
		watts = 1 + (max(watts, 0) % 999999) // the annotation's range
		c := costOf(gpus, watts)
		if c.Watts < 0 || c.GPUs < 0 {
			t.Fatalf("cost of %d GPUs x %d W is negative: %+v", gpus, watts, c)
		}
		if exact := new(big.Int).Mul(big.NewInt(max(gpus, 0)), big.NewInt(watts)); exact.IsInt64() && exact.Int64() != c.Watts {
			t.Fatalf("cost of %d GPUs x %d W = %d, want %s", gpus, watts, c.Watts, exact)
		}
		if bigger := costOf(policy.SatAdd(gpus, more), watts); bigger.Watts < c.Watts {
			t.Fatalf("more GPUs cost less: %d GPUs %d W, %d GPUs %d W", gpus, c.Watts, policy.SatAdd(gpus, more), bigger.Watts)
		}
		if watts < 999999 {
			if bigger := costOf(gpus, watts+1); bigger.Watts < c.Watts {
				t.Fatalf("more watts cost less: %d W -> %d, %d W -> %d", watts, c.Watts, watts+1, bigger.Watts)
			}
		}
		b := policy.BudgetState{Name: "b", Total: total, Committed: committed}
		exactFits := committed >= 0 && new(big.Int).Add(big.NewInt(committed), big.NewInt(c.Watts)).Cmp(big.NewInt(total)) <= 0
		if b.Fits(c.Watts) != exactFits {
			t.Fatalf("Fits(%d) on %d of %d = %v, exact arithmetic says %v", c.Watts, committed, total, b.Fits(c.Watts), exactFits)
		}
		if b.Available() < 0 {
			t.Fatalf("available %d", b.Available())
		}
		now := time.Unix(0, 0)
		r := policy.CountCommitted(
			[]policy.Charge{{UID: "a", Watts: c.Watts, GPUs: c.GPUs}, {UID: "b", Watts: c.Watts, GPUs: c.GPUs}},
			[]policy.Reservation{{UID: "c", Watts: committed, Expires: now.Add(time.Hour)}, {UID: "a", Watts: total, Expires: now.Add(time.Hour)}}, now)
		if r.Watts < c.Watts || r.Watts < 0 || r.GPUs < c.GPUs || r.GPUs < 0 {
			t.Fatalf("recomputed %+v from two pods of %+v: a sum below a part", r, c)
		}
	})
}

// Under unlimitedPods: Count an unlimited GPU pod costs its products' default
// board limit; where none of the products it can land on is in the catalog
// (a new GPU generation, or a node GFD has not labelled) it costs the
// catalog's highest default, never nothing.
func TestUnlimitedPodOnAnUncataloguedProductIsCharged(t *testing.T) {
	cat := policy.DefaultCatalog()
	for name, cluster := range map[string]fakeCluster{
		"uncatalogued product": {"new-0": "NVIDIA-B300-SXM6-288GB"},
		"unlabelled GPU node":  {"fresh-0": ""},
	} {
		node := "new-0"
		if name == "unlabelled GPU node" {
			node = "fresh-0"
		}
		p := pod().GPU(8).NodeName(node).Obj()
		if c := cat.CostOf(p, cluster, true); c.Watts == 0 {
			t.Errorf("%s: an unlimited 8-GPU pod costs %d W under unlimitedPods=Count; want a conservative charge (or a denial)", name, c.Watts)
		}
	}
}

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
		{"a pod on a claim others charge adds nothing, even over the total", charge(500, 0), nil, policy.BudgetState{Name: "cluster", Total: 1000, Committed: 1200}, false, policy.ReservationCharge},
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
