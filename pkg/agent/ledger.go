package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// LedgerFile is the ledger's name inside the state directory.
const LedgerFile = "ledger.json"

// maxLedgerFile bounds what is read of the ledger. An entry is about 120
// bytes and a node has at most a few dozen GPUs, so a real ledger stays under
// 10 KiB; a megabyte is far above that, and still cheap to parse.
const maxLedgerFile = 1 << 20

// Ownership is what the agent knows of a GPU it capped.
type Ownership struct {
	// Original is the limit the GPU had before the agent first capped it:
	// what it gets back. Zero when unknown (the ledger was lost): the GPU is
	// then left as it is when its pods go.
	Original policy.Milliwatts `json:"originalMilliwatts"`
	// Applied is the limit the agent last set and read back.
	Applied policy.Milliwatts `json:"appliedMilliwatts"`
	// Pending is a write in progress: recorded before calling NVML, cleared
	// after the read-back.
	Pending policy.Milliwatts `json:"pendingMilliwatts,omitempty"`
}

type ledgerDoc struct {
	Version int                  `json:"version"`
	GPUs    map[string]Ownership `json:"gpus"`
}

// Ledger is the agent's record of the GPUs it owns, persisted atomically.
type Ledger struct {
	path string
	mu   sync.Mutex
	gpus map[string]Ownership
	// recovering is set while the ledger cannot be taken as the whole record
	// of the agent's caps: it was missing or corrupt when read, and no
	// reconcile has run since (Settle).
	recovering bool
}

// ErrCorruptLedger marks a ledger file that was refused: not a regular file,
// larger than any real ledger, unreadable, or not parsing or validating.
var ErrCorruptLedger = errors.New("ledger is corrupt")

// OpenLedger reads the ledger in dir, creating dir if needed. A missing file
// is an empty ledger. A corrupt one is moved aside (kept for people to
// inspect) and the agent starts with an empty ledger: it then owns no GPU
// and restores none, which is safe; the error says so and matches
// ErrCorruptLedger.
func OpenLedger(dir string) (*Ledger, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	l, err := ReadLedger(dir)
	if errors.Is(err, ErrCorruptLedger) {
		aside := fmt.Sprintf("%s.corrupt-%d", l.path, time.Now().Unix())
		_ = os.Rename(l.path, aside)
		return l, fmt.Errorf("%w (moved to %s); no GPU is considered ours, none will be restored", err, aside)
	}
	return l, err
}

// ReadLedger reads the ledger in dir without changing anything on disk (for
// read-only tools such as `power-agent inspect`). A corrupt ledger reads as
// empty, with an error matching ErrCorruptLedger.
func ReadLedger(dir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(dir, LedgerFile), gpus: map[string]Ownership{}}
	data, err := readLedgerFile(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		l.recovering = true
		return l, nil
	case err != nil:
		l.recovering = true
		return l, fmt.Errorf("%w: %w", ErrCorruptLedger, err)
	}
	var doc ledgerDoc
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 || !validLedger(doc.GPUs) {
		l.recovering = true
		return l, fmt.Errorf("%s: %w: want JSON version 1 with GPU- keys and non-negative milliwatts", l.path, ErrCorruptLedger)
	}
	for uuid, o := range doc.GPUs {
		l.gpus[uuid] = o
	}
	return l, nil
}

// readLedgerFile reads the ledger only if it is a regular file of at most
// maxLedgerFile bytes. The state directory is on the host: a FIFO there would
// block the agent's start, a device or a symlink to one (/dev/zero) would
// exhaust its memory. It opens without following a symlink and without
// waiting for a writer, and checks what it opened.
func readLedgerFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("read ledger %s: is a symlink; refusing it", path)
	}
	if err != nil {
		return nil, fmt.Errorf("read ledger %s: %w", path, err)
	}
	defer func() { _ = f.Close() }() // opened read-only: a failed close loses nothing
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read ledger %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read ledger %s: not a regular file (mode %s); refusing it", path, fi.Mode())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxLedgerFile+1))
	if err != nil {
		return nil, fmt.Errorf("read ledger %s: %w", path, err)
	}
	if len(data) > maxLedgerFile {
		return nil, fmt.Errorf("read ledger %s: larger than %d bytes; refusing it", path, maxLedgerFile)
	}
	return data, nil
}

// Recovering reports whether the ledger was missing or corrupt when read and
// no reconcile has run since: until then, a GPU below its default may be
// capped by this agent's predecessor with nothing on record.
func (l *Ledger) Recovering() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovering
}

// Settle ends recovery after a reconcile: from then on the ledger holds every
// cap the agent sets. It writes the ledger even when it owns nothing, so the
// next agent finds a ledger and does not recover.
func (l *Ledger) Settle() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.recovering {
		return nil
	}
	if err := l.persist(); err != nil {
		return err
	}
	l.recovering = false
	return nil
}

func validLedger(gpus map[string]Ownership) bool {
	for uuid, o := range gpus {
		if len(uuid) < 5 || uuid[:4] != "GPU-" || o.Original < 0 || o.Applied < 0 || o.Pending < 0 {
			return false
		}
	}
	return true
}

// Get returns the ownership of a GPU, if the agent owns it.
func (l *Ledger) Get(uuid string) (Ownership, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	o, ok := l.gpus[uuid]
	return o, ok
}

// Owned lists the GPUs the agent owns.
func (l *Ledger) Owned() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.gpus))
	for uuid := range l.gpus {
		out = append(out, uuid)
	}
	return out
}

// Put records a GPU's ownership and persists the ledger.
func (l *Ledger) Put(uuid string, o Ownership) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, had := l.gpus[uuid]
	l.gpus[uuid] = o
	if err := l.persist(); err != nil {
		if had {
			l.gpus[uuid] = prev
		} else {
			delete(l.gpus, uuid)
		}
		return err
	}
	return nil
}

// Forget drops a GPU the agent gave back, and persists the ledger.
func (l *Ledger) Forget(uuid string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, had := l.gpus[uuid]
	if !had {
		return nil
	}
	delete(l.gpus, uuid)
	if err := l.persist(); err != nil {
		l.gpus[uuid] = prev
		return err
	}
	return nil
}

// persist writes the ledger to a temporary file, syncs it and renames it over
// the old one, then syncs the directory: a crash leaves the old or the new
// ledger, never a torn one.
func (l *Ledger) persist() error {
	data, err := json.MarshalIndent(ledgerDoc{Version: 1, GPUs: l.gpus}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ledger: %w", err)
	}
	dir := filepath.Dir(l.path)
	tmp, err := os.CreateTemp(dir, LedgerFile+".tmp-*")
	if err != nil {
		return fmt.Errorf("write ledger: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write ledger %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("sync ledger %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close ledger %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return fmt.Errorf("replace ledger %s: %w", l.path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
