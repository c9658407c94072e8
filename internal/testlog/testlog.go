package testlog

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/dynamo-power/gpu-power/test/framework/poll"
)

// Lines keeps what was logged to Logger.
type Lines struct {
	Logger logr.Logger
	mu     sync.Mutex
	lines  []map[string]any
}

// New is an empty log; a line that is not JSON fails t.
func New(t *testing.T) *Lines {
	l := &Lines{}
	l.Logger = funcr.NewJSON(func(obj string) {
		var line map[string]any
		if err := json.Unmarshal([]byte(obj), &line); err != nil {
			t.Errorf("log line %s: %v", obj, err)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, line)
	}, funcr.Options{Verbosity: 1})
	return l
}

// Find returns the lines logged with message msg.
func (l *Lines) Find(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []map[string]any
	for _, line := range l.lines {
		if line["msg"] == msg {
			found = append(found, line)
		}
	}
	return found
}

// All returns every line, as JSON, for a failure message.
func (l *Lines) All() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := json.Marshal(l.lines)
	return string(b)
}

// WaitFor waits for a line with message msg, and fails t when none comes.
func (l *Lines) WaitFor(t *testing.T, msg string) {
	t.Helper()
	poll.Eventually(t, 10*time.Second, "log line "+msg, func() (bool, string) {
		return len(l.Find(msg)) > 0, "logged: " + l.All()
	})
}
