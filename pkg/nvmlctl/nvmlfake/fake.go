package nvmlfake

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
)

// Op names a Library method, for fault injection and the call record.
type Op string

// The Library methods.
const (
	OpDevices       Op = "Devices"
	OpPowerLimits   Op = "PowerLimits"
	OpPowerDraw     Op = "PowerDraw"
	OpPowerCapped   Op = "PowerCapped"
	OpProcesses     Op = "Processes"
	OpSetPowerLimit Op = "SetPowerLimit"
	OpMIGParent     Op = "MIGParent"
	OpShutdown      Op = "Shutdown"
)

// nvmlOps are the NVML calls an Op makes that fail first, so an injected
// error reads like one from the real library.
var nvmlOps = map[Op]string{
	OpDevices:       "DeviceGetHandleByIndex",
	OpPowerLimits:   "GetPowerManagementLimit",
	OpPowerDraw:     "GetPowerUsage",
	OpPowerCapped:   "GetViolationStatus",
	OpProcesses:     "GetComputeRunningProcesses",
	OpSetPowerLimit: "SetPowerManagementLimit",
	OpMIGParent:     "GetDeviceHandleFromMigDeviceHandle",
	OpShutdown:      "Shutdown",
}

// Call is one Library call a Fake received, failed or not.
type Call struct {
	Op   Op
	UUID string
	// Limit is the limit asked for, for OpSetPowerLimit.
	Limit nvmlctl.Milliwatts
}

// Fake is a Library without hardware. It answers like NVML does, down to the
// return codes: a limit outside the constraints is NVML_ERROR_INVALID_ARGUMENT,
// a lost GPU is NVML_ERROR_GPU_IS_LOST on every call that names it, an
// unknown UUID is NVML_ERROR_NOT_FOUND, a power call on a MIG device is
// NVML_ERROR_NOT_SUPPORTED, any call after Shutdown is
// NVML_ERROR_UNINITIALIZED. Setting a limit also sets the enforced limit;
// set Enforced with Update to model an out-of-band limiter.
//
// A Fake keeps its state in memory, or, after PersistTo or NewFromFile,
// in a JSON state file (see State) that it reads before every call and
// rewrites atomically after every change, so another process sees what the
// "hardware" was set to and can change processes, limits or lose a GPU.
// Two processes that change the file at the same moment: the last rename
// wins. Faults and the call record stay in memory.
//
// A Fake is safe for concurrent use.
type Fake struct {
	mu       sync.Mutex
	state    State
	path     string // "" keeps the state in memory
	faults   []fault
	calls    []Call
	shutdown bool
}

type fault struct {
	op   Op
	uuid string // "" matches every device
	err  error
	left int // calls it still fails; < 0: every call
}

var _ nvmlctl.Library = (*Fake)(nil)

// New returns a Fake with these GPUs (H100s(8)... for a DGX H100). It
// panics on GPUs that break State's rules: a test built them.
func New(gpus ...GPU) *Fake {
	s := State{Devices: cloneGPUs(gpus)}
	if err := s.normalize(); err != nil {
		panic(fmt.Sprintf("nvmlfake.New: %v", err))
	}
	return &Fake{state: s}
}

// NewFromFile returns a Fake whose state lives in the state file at path,
// which must exist and be valid.
func NewFromFile(path string) (*Fake, error) {
	s, err := readState(path)
	if err != nil {
		return nil, err
	}
	return &Fake{state: s, path: path}, nil
}

// PersistTo writes the fake's state to path and keeps it there from now on.
func (f *Fake) PersistTo(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := writeState(path, f.state); err != nil {
		return err
	}
	f.path = path
	return nil
}

// FailNext makes the next call of op on the GPU uuid ("" for any GPU, and
// for Devices the whole listing) fail with err. A Code (ErrNotPermitted,
// ErrGPULost, …) comes back as an *Error naming the NVML call and the GPU,
// as the real library's would; any other error comes back as it is. Faults
// are checked in the order they were added.
func (f *Fake) FailNext(op Op, uuid string, err error) {
	f.addFault(fault{op: op, uuid: uuid, err: err, left: 1})
}

// FailAlways is FailNext for every call.
func (f *Fake) FailAlways(op Op, uuid string, err error) {
	f.addFault(fault{op: op, uuid: uuid, err: err, left: -1})
}

func (f *Fake) addFault(ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, ft)
}

// maxRecordedCalls bounds the call record, so a Fake behind an agent that
// runs for days (make up) does not grow without end.
const maxRecordedCalls = 4096

// Calls returns the Library calls received so far, in order: the most recent
// maxRecordedCalls of them.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls[max(0, len(f.calls)-maxRecordedCalls):])
}

// State returns the current state: what the "hardware" is set to.
func (f *Fake) State() (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.load(); err != nil {
		return State{}, err
	}
	return State{Devices: cloneGPUs(f.state.Devices)}, nil
}

// GPU returns the current state of one GPU.
func (f *Fake) GPU(uuid string) (GPU, error) {
	s, err := f.State()
	if err != nil {
		return GPU{}, err
	}
	for _, g := range s.Devices {
		if g.UUID == uuid {
			return g, nil
		}
	}
	return GPU{}, fmt.Errorf("fake GPU %s: %w", uuid, nvmlctl.ErrNotFound)
}

// Update changes a GPU as the world outside the agent would: a workload
// starts (Processes), the draw changes, a firmware limiter lowers Enforced.
// The result must still satisfy State's rules. Update is not a Library
// call: no fault applies and nothing is recorded.
func (f *Fake) Update(uuid string, change func(*GPU)) error {
	unlock, err := f.lockForChange()
	if err != nil {
		return err
	}
	defer unlock()
	if err := f.load(); err != nil {
		return err
	}
	next := State{Devices: cloneGPUs(f.state.Devices)}
	i := slices.IndexFunc(next.Devices, func(g GPU) bool { return g.UUID == uuid })
	if i < 0 {
		return fmt.Errorf("update fake GPU %s: %w", uuid, nvmlctl.ErrNotFound)
	}
	change(&next.Devices[i])
	if err := next.normalize(); err != nil {
		return fmt.Errorf("update fake GPU %s: %w", uuid, err)
	}
	return f.commit(next)
}

// SetProcesses replaces the processes running on a GPU.
func (f *Fake) SetProcesses(uuid string, procs ...nvmlctl.Process) error {
	return f.Update(uuid, func(g *GPU) { g.Processes = slices.Clone(procs) })
}

// SetLimitExternally sets a GPU's limit as nvidia-smi or another agent would:
// the drift the agent has to notice. Like NVML, it refuses a limit outside
// the constraints.
func (f *Fake) SetLimitExternally(uuid string, limit nvmlctl.Milliwatts) error {
	return f.Update(uuid, func(g *GPU) { g.Limit, g.Enforced = limit, limit })
}

// AddPowerCapped adds d to the time a GPU was held back by its power cap
// (GPU.PowerCapped), as the driver's counter grows while a cap binds.
func (f *Fake) AddPowerCapped(uuid string, d time.Duration) error {
	return f.Update(uuid, func(g *GPU) { g.PowerCapped += d })
}

// LoseGPU makes a GPU fall off the bus: every later call that names it, or
// one of its MIG devices, fails with ErrGPULost.
func (f *Fake) LoseGPU(uuid string) error {
	return f.Update(uuid, func(g *GPU) { g.Lost = true })
}

// Devices implements Library.
func (f *Fake) Devices() ([]nvmlctl.Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(Call{Op: OpDevices}); err != nil {
		return nil, err
	}
	// A fault for any GPU fails the listing; one for a GPU drops that GPU.
	if err := f.injected(OpDevices, ""); err != nil {
		return nil, err
	}
	var devs []nvmlctl.Device
	var errs []error
	for _, g := range f.state.Devices {
		if err := f.injected(OpDevices, g.UUID); err != nil {
			errs = append(errs, err)
			continue
		}
		if g.Lost {
			errs = append(errs, &nvmlctl.Error{Op: nvmlOps[OpDevices], UUID: g.UUID, Code: nvmlctl.CodeGPUIsLost})
			continue
		}
		devs = append(devs, nvmlctl.Device{Index: g.Index, UUID: g.UUID, Name: g.Name, MIGEnabled: g.MIGEnabled})
	}
	return devs, errors.Join(errs...)
}

// PowerLimits implements Library.
func (f *Fake) PowerLimits(uuid string) (nvmlctl.PowerLimits, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, err := f.device(Call{Op: OpPowerLimits, UUID: uuid})
	if err != nil {
		return nvmlctl.PowerLimits{}, err
	}
	return nvmlctl.PowerLimits{Min: g.Min, Max: g.Max, Default: g.Default, Current: g.Limit, Enforced: g.Enforced}, nil
}

// PowerDraw implements Library.
func (f *Fake) PowerDraw(uuid string) (nvmlctl.Milliwatts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, err := f.device(Call{Op: OpPowerDraw, UUID: uuid})
	if err != nil {
		return 0, err
	}
	return g.Draw, nil
}

// PowerCapped implements Library: GPU.PowerCapped, or ErrNotSupported
// where GPU.PowerCappedUnsupported says the GPU does not keep it.
func (f *Fake) PowerCapped(uuid string) (time.Duration, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, err := f.device(Call{Op: OpPowerCapped, UUID: uuid})
	if err != nil {
		return 0, err
	}
	if g.PowerCappedUnsupported {
		return 0, &nvmlctl.Error{Op: nvmlOps[OpPowerCapped], UUID: uuid, Code: nvmlctl.CodeNotSupported}
	}
	return g.PowerCapped, nil
}

// Processes implements Library.
func (f *Fake) Processes(uuid string) ([]nvmlctl.Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, err := f.device(Call{Op: OpProcesses, UUID: uuid})
	if err != nil {
		return nil, err
	}
	return slices.Clone(g.Processes), nil
}

// SetPowerLimit implements Library.
func (f *Fake) SetPowerLimit(uuid string, limit nvmlctl.Milliwatts) error {
	unlock, err := f.lockForChange()
	if err != nil {
		return err
	}
	defer unlock()
	g, err := f.device(Call{Op: OpSetPowerLimit, UUID: uuid, Limit: limit})
	if err != nil {
		return err
	}
	switch {
	case g.RefuseLimitWrites:
		return &nvmlctl.Error{Op: nvmlOps[OpSetPowerLimit], UUID: uuid, Code: nvmlctl.CodeNoPermission}
	case limit < g.Min || limit > g.Max:
		return &nvmlctl.Error{Op: nvmlOps[OpSetPowerLimit], UUID: uuid, Code: nvmlctl.CodeInvalidArgument}
	}
	next := State{Devices: cloneGPUs(f.state.Devices)}
	for i := range next.Devices {
		if next.Devices[i].UUID == uuid {
			next.Devices[i].Limit, next.Devices[i].Enforced = limit, limit
		}
	}
	return f.commit(next)
}

// MIGParent implements Library.
func (f *Fake) MIGParent(migUUID string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(Call{Op: OpMIGParent, UUID: migUUID}); err != nil {
		return "", err
	}
	if err := f.injected(OpMIGParent, migUUID); err != nil {
		return "", err
	}
	for _, g := range f.state.Devices {
		if g.UUID == migUUID {
			// NVML answers a GPU handle's IsMigDeviceHandle with false.
			return "", &nvmlctl.Error{Op: "IsMigDeviceHandle", UUID: migUUID, Code: nvmlctl.CodeInvalidArgument}
		}
		if slices.Contains(g.MIGDevices, migUUID) {
			if g.Lost {
				return "", &nvmlctl.Error{Op: nvmlOps[OpMIGParent], UUID: migUUID, Code: nvmlctl.CodeGPUIsLost}
			}
			return g.UUID, nil
		}
	}
	return "", &nvmlctl.Error{Op: "DeviceGetHandleByUUID", UUID: migUUID, Code: nvmlctl.CodeNotFound}
}

// Shutdown implements Library.
func (f *Fake) Shutdown() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(Call{Op: OpShutdown}); err != nil {
		return err
	}
	if err := f.injected(OpShutdown, ""); err != nil {
		return err
	}
	f.shutdown = true
	return nil
}

// begin records a call and fails it the way NVML would when the library is
// shut down or its state cannot be read. f.mu is held.
func (f *Fake) begin(c Call) error {
	if len(f.calls) == 2*maxRecordedCalls {
		f.calls = append(f.calls[:0], f.calls[maxRecordedCalls:]...)
	}
	f.calls = append(f.calls, c)
	if f.shutdown {
		return &nvmlctl.Error{Op: nvmlOps[c.Op], UUID: c.UUID, Code: nvmlctl.CodeUninitialized}
	}
	return f.load()
}

// device starts a call about one GPU and returns it, or the error NVML would
// give. f.mu is held.
func (f *Fake) device(c Call) (GPU, error) {
	if err := f.begin(c); err != nil {
		return GPU{}, err
	}
	if err := f.injected(c.Op, c.UUID); err != nil {
		return GPU{}, err
	}
	for _, g := range f.state.Devices {
		if g.UUID == c.UUID {
			if g.Lost {
				return GPU{}, &nvmlctl.Error{Op: nvmlOps[c.Op], UUID: c.UUID, Code: nvmlctl.CodeGPUIsLost}
			}
			return g, nil
		}
		if slices.Contains(g.MIGDevices, c.UUID) {
			// Power and process queries are the whole board's.
			return GPU{}, &nvmlctl.Error{Op: nvmlOps[c.Op], UUID: c.UUID, Code: nvmlctl.CodeNotSupported}
		}
	}
	return GPU{}, &nvmlctl.Error{Op: "DeviceGetHandleByUUID", UUID: c.UUID, Code: nvmlctl.CodeNotFound}
}

// injected returns the error of the first fault matching op on uuid, and
// uses it up. f.mu is held.
func (f *Fake) injected(op Op, uuid string) error {
	for i, ft := range f.faults {
		if ft.op != op || (ft.uuid != "" && ft.uuid != uuid) {
			continue
		}
		if ft.left > 0 {
			f.faults[i].left--
			if f.faults[i].left == 0 {
				f.faults = slices.Delete(f.faults, i, i+1)
			}
		}
		// A bare code is dressed as NVML would return it; other errors pass as given.
		if code, ok := ft.err.(nvmlctl.Code); ok { //nolint:errorlint // only an unwrapped Code is dressed
			return &nvmlctl.Error{Op: nvmlOps[op], UUID: uuid, Code: code}
		}
		return ft.err
	}
	return nil
}

// load re-reads the state file, so a change by another process is seen.
// f.mu is held.
func (f *Fake) load() error {
	if f.path == "" {
		return nil
	}
	s, err := readState(f.path)
	if err != nil {
		return err
	}
	f.state = s
	return nil
}

// lockForChange locks f.mu and, for a read-modify-write, an exclusive flock
// on the state file's lock file: the agent and a test's GPU feeder change one
// file from two processes, and a change made between another's read and
// write would otherwise be lost. Reads need no flock: writes replace the
// file whole.
func (f *Fake) lockForChange() (unlock func(), err error) {
	f.mu.Lock()
	if f.path == "" {
		return f.mu.Unlock, nil
	}
	lf, err := os.OpenFile(f.path+".lock", os.O_CREATE|os.O_RDONLY, 0o644)
	if err == nil {
		if err = syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
			_ = lf.Close()
		}
	}
	if err != nil {
		f.mu.Unlock()
		return nil, fmt.Errorf("lock fake state %s: %w", f.path, err)
	}
	return func() {
		_ = lf.Close() // releases the flock
		f.mu.Unlock()
	}, nil
}

// commit adopts next and writes it to the state file. f.mu is held.
func (f *Fake) commit(next State) error {
	if f.path != "" {
		if err := writeState(f.path, next); err != nil {
			return err
		}
	}
	f.state = next
	return nil
}

func cloneGPUs(gpus []GPU) []GPU {
	out := slices.Clone(gpus)
	for i := range out {
		out[i].MIGDevices = slices.Clone(out[i].MIGDevices)
		out[i].Processes = slices.Clone(out[i].Processes)
	}
	return out
}
