package budget

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/dynamo-power/gpu-power/internal/testpod"
	"github.com/dynamo-power/gpu-power/pkg/podindex"
)

// TestPodBurstListsBudgetsOnce: a burst of GPU pod events lists the budgets
// once, after settle, not once an event; a change after that pass schedules
// the next, and a pass that could not list is tried again. Every change is
// followed by a pass that starts after it.
func TestPodBurstListsBudgetsOnce(t *testing.T) {
	ix := podindex.New()
	var mu sync.Mutex
	var timers []func()
	var delays []time.Duration
	passes, failing := 0, false
	s := &podSource{
		pods: ix,
		enqueueAll: func(_ context.Context, _ workqueue.TypedRateLimitingInterface[reconcile.Request], after time.Duration) bool {
			mu.Lock()
			defer mu.Unlock()
			passes++
			delays = append(delays, after)
			return !failing
		},
		after: func(d time.Duration, fn func()) {
			mu.Lock()
			defer mu.Unlock()
			if d != settle {
				t.Errorf("a pass scheduled after %v; want settle (%v)", d, settle)
			}
			timers = append(timers, fn)
		},
	}
	if err := s.Start(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	add := func(from, to int) {
		for i := from; i < to; i++ {
			if err := ix.Add(testpod.MakePod(fmt.Sprintf("gpu-%03d", i), "llm").GPU(1).UID(fmt.Sprintf("uid-%03d", i)).Obj()); err != nil {
				t.Fatal(err)
			}
		}
	}
	fire := func(i int) {
		mu.Lock()
		fn := timers[i]
		mu.Unlock()
		fn()
	}
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(timers), passes
	}

	add(0, 100)
	if n, p := count(); n != 1 || p != 0 {
		t.Fatalf("100 GPU pods stored: %d passes scheduled, %d run; want 1 scheduled, none run before settle", n, p)
	}
	fire(0)
	if n, p := count(); n != 1 || p != 1 {
		t.Fatalf("after settle: %d scheduled, %d run; want 1 and 1", n, p)
	}
	add(100, 101)
	if n, p := count(); n != 2 || p != 1 {
		t.Fatalf("a pod after the pass: %d scheduled, %d run; want a second pass scheduled", n, p)
	}
	fire(1)
	if n, p := count(); n != 2 || p != 2 || delays[0] != 0 || delays[1] != 0 {
		t.Fatalf("%d scheduled, %d run, delays %v; want 2 passes enqueueing at once", n, p, delays)
	}

	// A pass that cannot list the budgets is tried again: the burst's
	// changes are still to be counted.
	mu.Lock()
	failing = true
	mu.Unlock()
	add(101, 102)
	fire(2)
	if n, p := count(); n != 4 || p != 3 {
		t.Fatalf("a failed list: %d scheduled, %d run; want the pass scheduled again", n, p)
	}
	mu.Lock()
	failing = false
	mu.Unlock()
	fire(3)
	add(102, 103)
	if n, p := count(); n != 5 || p != 4 {
		t.Fatalf("after the retry listed: %d scheduled, %d run; want 5 and 4", n, p)
	}
}
