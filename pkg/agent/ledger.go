package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// LedgerFile is the ledger's name inside the state directory.
const LedgerFile = "ledger.json"

// MarkerFile is written in the state directory the first time an agent opens
// it, apart from the ledger, and never removed. A state directory with
// neither is a first install: no agent ever capped a GPU here, so a limit
// off its default is an administrator's, whatever a pod asks. One with the
// marker and no (or a corrupt) ledger lost its ledger: the agent recovers.
const MarkerFile = "initialized"

const markerText = "power-agent state directory: ledger.json records the GPUs this agent capped; do not remove this file\n"

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
	// Recovering is set while a lost ledger's recovery has not ended for
	// every GPU; Settled are the GPUs it ended for. An agent restarted
	// meanwhile goes on recovering the others.
	Recovering bool     `json:"recovering,omitempty"`
	Settled    []string `json:"settledGPUs,omitempty"`
}

// Ledger is the agent's record of the GPUs it owns, persisted atomically.
type Ledger struct {
	path string
	mu   sync.Mutex
	gpus map[string]Ownership
	// recovering is set while the ledger cannot be taken as the whole record
	// of the agent's caps: it was lost (missing after the state directory
	// was initialised, or corrupt), and not every GPU was reconciled since
	// (Settle). settled are the GPUs that were: the record is whole for them.
	recovering bool
	settled    map[string]bool
}

// ErrCorruptLedger marks a ledger file that was refused: not a regular file,
// larger than any real ledger, unreadable, or not parsing or validating.
var ErrCorruptLedger = errors.New("ledger is corrupt")

// OpenLedger reads the ledger in dir, creating dir and its MarkerFile if
// needed. A missing file is an empty ledger: in recovery if the marker was
// there (the ledger was lost), not on a first install. A corrupt one is moved
// aside (kept for people to inspect) and the agent starts with an empty
// ledger in recovery: it then owns no GPU and restores none, which is safe;
// the error says so and matches ErrCorruptLedger.
func OpenLedger(dir string) (*Ledger, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	l, err := ReadLedger(dir)
	if errors.Is(err, ErrCorruptLedger) {
		aside := fmt.Sprintf("%s.corrupt-%d", l.path, time.Now().Unix())
		_ = os.Rename(l.path, aside)
		err = fmt.Errorf("%w (moved to %s); no GPU is considered ours, none will be restored", err, aside)
	}
	if l == nil {
		return nil, err
	}
	if markErr := writeMarker(dir); markErr != nil {
		return nil, errors.Join(markErr, err)
	}
	if _, statErr := os.Lstat(l.path); err == nil && errors.Is(statErr, fs.ErrNotExist) && !l.recovering {
		// A first install records its (empty) ledger at once: from now on a
		// missing ledger is a lost one.
		if err := l.persist(); err != nil {
			return nil, err
		}
	}
	return l, err
}

// ReadLedger reads the ledger in dir without changing anything on disk (for
// read-only tools such as `power-agent inspect`). A corrupt ledger reads as
// empty, with an error matching ErrCorruptLedger.
func ReadLedger(dir string) (*Ledger, error) {
	l := &Ledger{path: filepath.Join(dir, LedgerFile), gpus: map[string]Ownership{}, settled: map[string]bool{}}
	data, err := readLedgerFile(l.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		marked, markErr := hasMarker(dir)
		l.recovering = marked
		return l, markErr
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
	if doc.Recovering {
		l.recovering = true
		for _, uuid := range doc.Settled {
			l.settled[uuid] = true
		}
	}
	return l, nil
}

// hasMarker reports whether dir holds MarkerFile, in whatever form: anything
// there says an agent opened the directory before.
func hasMarker(dir string) (bool, error) {
	_, err := os.Lstat(filepath.Join(dir, MarkerFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return true, fmt.Errorf("read state marker %s: %w", filepath.Join(dir, MarkerFile), err)
	}
	return true, nil
}

// writeMarker writes MarkerFile once, durably, before the agent can cap
// anything.
func writeMarker(dir string) error {
	marked, err := hasMarker(dir)
	if marked || err != nil {
		return err
	}
	path := filepath.Join(dir, MarkerFile)
	if err := writeFileAtomic(path, []byte(markerText)); err != nil {
		return fmt.Errorf("write state marker %s: %w", path, err)
	}
	return nil
}

// readLedgerFile reads the ledger only if it is a regular file of at most
// maxLedgerFile bytes. The state directory is on the host: a FIFO there would
// block the agent's start, a device or a symlink to one (/dev/zero) would
// exhaust its memory. It opens without following a symlink and without
// waiting for a writer, and checks what it opened.
func readLedgerFile(path string) ([]byte, error) {
	// Lstat first: an open, even O_NONBLOCK, of a device node can have side
	// effects (a tape rewinds); only a regular file is opened at all.
	lfi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("read ledger %s: %w", path, err)
	}
	switch {
	case lfi.Mode()&fs.ModeSymlink != 0:
		return nil, fmt.Errorf("read ledger %s: is a symlink; refusing it", path)
	case !lfi.Mode().IsRegular():
		return nil, fmt.Errorf("read ledger %s: not a regular file (mode %s); refusing it", path, lfi.Mode())
	}
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
	if !os.SameFile(lfi, fi) {
		return nil, fmt.Errorf("read ledger %s: replaced while it was opened; refusing it", path)
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

// Recovering reports whether the ledger was lost (missing after the state
// directory was initialised, or corrupt) and some GPU has not been reconciled
// since.
func (l *Ledger) Recovering() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovering
}

// RecoveringGPU reports whether the ledger is recovering and the GPU has not
// been reconciled since: until then, a limit off the GPU's default may be a
// cap of this agent's predecessor with nothing on record.
func (l *Ledger) RecoveringGPU(uuid string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovering && !l.settled[uuid]
}

// Settle ends recovery for the GPUs a reconcile read and decided without an
// error (evaluated): from then on the ledger holds every cap the agent sets
// on them. When every GPU of the node (all; nil when the list is not known
// whole) is settled, recovery is over. It writes the ledger even when it owns
// nothing, so the next agent finds a ledger and recovers only the GPUs not
// settled yet.
func (l *Ledger) Settle(evaluated, all []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.recovering {
		return nil
	}
	settled := maps.Clone(l.settled)
	for _, uuid := range evaluated {
		settled[uuid] = true
	}
	done := all != nil
	for _, uuid := range all {
		done = done && settled[uuid]
	}
	if maps.Equal(settled, l.settled) && !done {
		return nil
	}
	prev := l.settled
	l.settled = settled
	if done {
		l.recovering, l.settled = false, map[string]bool{}
	}
	if err := l.persist(); err != nil {
		l.recovering, l.settled = true, prev
		return err
	}
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
	doc := ledgerDoc{Version: 1, GPUs: l.gpus, Recovering: l.recovering}
	if l.recovering {
		doc.Settled = slices.Sorted(maps.Keys(l.settled))
	}
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ledger: %w", err)
	}
	return writeFileAtomic(l.path, data)
}

// writeFileAtomic writes data to a temporary file, syncs it and renames it
// over path, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
