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
// the next. Every change is followed by a pass that starts after it.
func TestPodBurstListsBudgetsOnce(t *testing.T) {
	ix := podindex.New()
	var mu sync.Mutex
	var timers []func()
	var delays []time.Duration
	passes := 0
	s := &podSource{
		pods: ix,
		enqueueAll: func(_ context.Context, _ workqueue.TypedRateLimitingInterface[reconcile.Request], after time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			passes++
			delays = append(delays, after)
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
}
