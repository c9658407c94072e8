// Package poll is how every test level waits for a condition: one
// implementation, Until, for harness code that returns errors (sandbox,
// realnode, prometheustest), and Eventually, its testing.TB form, for tests.
// It holds Cond (what is polled), Opts (how often, how long, whether the
// first look waits an interval), Interval (the default period) and those two
// functions. It imports nothing of this module, so every level can use it.
package poll

import (
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// Interval is the period when Opts names none: short, since the conditions
// polled are cheap reads of a cache, an API server or a local file.
const Interval = 50 * time.Millisecond

// Cond reports whether the awaited state holds and, while it does not, what
// it saw instead (the reason an expired wait reports). An error ends the
// wait at once: the state can no longer come (a process exited).
type Cond func(ctx context.Context) (ok bool, why string, err error)

// Opts says how Until polls.
type Opts struct {
	// Interval between looks; Interval when zero.
	Interval time.Duration
	// Timeout bounds the wait; zero leaves it to ctx.
	Timeout time.Duration
	// Delay makes the first look wait one Interval, for a cond that
	// measures a rate since the previous look.
	Delay bool
}

// Until polls cond until it holds. When cond fails, ctx ends or the timeout
// passes it returns an error naming what, the timeout, the last reason cond
// gave and the cause.
func Until(ctx context.Context, o Opts, what string, cond Cond) error {
	if o.Interval == 0 {
		o.Interval = Interval
	}
	var last string
	look := func(ctx context.Context) (bool, error) {
		ok, why, err := cond(ctx)
		last = why
		return ok, err
	}
	var err error
	if o.Timeout > 0 {
		err = wait.PollUntilContextTimeout(ctx, o.Interval, o.Timeout, !o.Delay, look)
	} else {
		err = wait.PollUntilContextCancel(ctx, o.Interval, !o.Delay, look)
	}
	if err == nil {
		return nil
	}
	within := ""
	if o.Timeout > 0 {
		within = " within " + o.Timeout.String()
	}
	if last == "" {
		return fmt.Errorf("%s: never happened%s: %w", what, within, err)
	}
	return fmt.Errorf("%s: never happened%s (last seen: %s): %w", what, within, last, err)
}

// Eventually polls cond every Interval until it holds, failing t with the
// last thing cond saw when it does not within timeout. It is Until bound to
// t.Context().
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if err := Until(t.Context(), Opts{Timeout: timeout}, what, func(context.Context) (bool, string, error) {
		ok, why := cond()
		return ok, why, nil
	}); err != nil {
		t.Fatal(err)
	}
}
