package poll

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	looks := 0
	if err := Until(t.Context(), Opts{Interval: time.Millisecond, Timeout: time.Minute}, "third look", func(context.Context) (bool, string, error) {
		looks++
		return looks == 3, "", nil
	}); err != nil || looks != 3 {
		t.Errorf("Until = %v after %d looks; want nil after 3", err, looks)
	}

	err := Until(t.Context(), Opts{Interval: time.Millisecond, Timeout: 20 * time.Millisecond}, "never", func(context.Context) (bool, string, error) {
		return false, "still no", nil
	})
	if err == nil || !strings.Contains(err.Error(), "never: never happened within 20ms (last seen: still no)") || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an expired wait: %v", err)
	}

	gone := errors.New("process exited")
	looks = 0
	err = Until(t.Context(), Opts{Interval: time.Millisecond}, "stopped", func(context.Context) (bool, string, error) {
		looks++
		return false, "", gone
	})
	if !errors.Is(err, gone) || looks != 1 {
		t.Errorf("a failing cond: %v after %d looks; want %v after 1", err, looks, gone)
	}
}

func TestUntilDelay(t *testing.T) {
	start := time.Now()
	var first time.Duration
	if err := Until(t.Context(), Opts{Interval: 20 * time.Millisecond, Timeout: time.Minute, Delay: true}, "a look", func(context.Context) (bool, string, error) {
		first = time.Since(start)
		return true, "", nil
	}); err != nil {
		t.Fatal(err)
	}
	if first < 20*time.Millisecond {
		t.Errorf("first look after %s; want one interval (20ms) with Delay", first)
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, time.Minute, "n reaches 2", func() (bool, string) { n++; return n == 2, "" })
	if n != 2 {
		t.Errorf("cond called %d times; want 2", n)
	}
}
