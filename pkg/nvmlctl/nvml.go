//go:build cgo

package nvmlctl

import (
	"encoding/binary"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// notAvailable is NVML_VALUE_NOT_AVAILABLE for unsigned long long: what a
// process's used memory reads as where the driver will not say.
const notAvailable = math.MaxUint64

// NVML is the Library over the real NVML, through go-nvml. Device handles
// are looked up by UUID on every call rather than cached: a lookup costs
// well under a microsecond, and a handle can go stale when a GPU is reset.
type NVML struct {
	lib nvml.Interface
	// initErr is the Init failure; when set, lib is never called again.
	initErr error

	// mu lets calls run in parallel (NVML is thread-safe) but keeps
	// Shutdown from racing them.
	mu     sync.RWMutex
	closed bool

	// violationStatus says whether the loaded libnvidia-ml exports
	// nvmlDeviceGetViolationStatus, looked up once: go-nvml binds symbols
	// lazily, and calling one a newer driver dropped would end the process.
	violationOnce   sync.Once
	violationStatus bool
}

var _ Library = (*NVML)(nil)

// Open initialises NVML once, through lib (nvml.New() on a node; go-nvml's
// mock in tests). It always returns a usable *NVML: after a failed Init
// every method returns that error without calling NVML, so the agent can stay
// up, report unready and say why. Call Shutdown when done.
func Open(lib nvml.Interface) (*NVML, error) {
	n := &NVML{lib: lib}
	if ret := lib.Init(); ret != nvml.SUCCESS {
		n.initErr = &Error{Op: "Init", Code: Code(ret)}
	}
	return n, n.initErr
}

// enter takes the read lock and says whether NVML may be called; every
// method calls it first and, on nil, defers n.mu.RUnlock.
func (n *NVML) enter(op, uuid string) error {
	if n.initErr != nil {
		return n.initErr
	}
	n.mu.RLock()
	if n.closed {
		n.mu.RUnlock()
		return &Error{Op: op, UUID: uuid, Code: CodeUninitialized}
	}
	return nil
}

func (n *NVML) handle(uuid string) (nvml.Device, error) {
	d, ret := n.lib.DeviceGetHandleByUUID(uuid)
	if ret != nvml.SUCCESS {
		return nil, &Error{Op: "DeviceGetHandleByUUID", UUID: uuid, Code: Code(ret)}
	}
	return d, nil
}

// Devices implements Library.
func (n *NVML) Devices() ([]Device, error) {
	if err := n.enter("DeviceGetCount", ""); err != nil {
		return nil, err
	}
	defer n.mu.RUnlock()
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, &Error{Op: "DeviceGetCount", Code: Code(ret)}
	}
	var devs []Device
	var errs []error
	for i := range count {
		dev, err := device(n.lib, i)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		devs = append(devs, dev)
	}
	return devs, errors.Join(errs...)
}

func device(lib nvml.Interface, index int) (Device, error) {
	d, ret := lib.DeviceGetHandleByIndex(index)
	if ret != nvml.SUCCESS {
		return Device{}, &Error{Op: "DeviceGetHandleByIndex", Code: Code(ret)}
	}
	uuid, ret := d.GetUUID()
	if ret != nvml.SUCCESS {
		return Device{}, &Error{Op: "GetUUID", Code: Code(ret)}
	}
	name, ret := d.GetName()
	if ret != nvml.SUCCESS {
		return Device{}, &Error{Op: "GetName", UUID: uuid, Code: Code(ret)}
	}
	mig, _, ret := d.GetMigMode()
	switch ret {
	case nvml.SUCCESS:
	case nvml.ERROR_NOT_SUPPORTED: // a GPU without MIG
		mig = nvml.DEVICE_MIG_DISABLE
	default:
		return Device{}, &Error{Op: "GetMigMode", UUID: uuid, Code: Code(ret)}
	}
	return Device{Index: index, UUID: uuid, Name: name, MIGEnabled: mig == nvml.DEVICE_MIG_ENABLE}, nil
}

// PowerLimits implements Library.
func (n *NVML) PowerLimits(uuid string) (PowerLimits, error) {
	if err := n.enter("GetPowerManagementLimit", uuid); err != nil {
		return PowerLimits{}, err
	}
	defer n.mu.RUnlock()
	d, err := n.handle(uuid)
	if err != nil {
		return PowerLimits{}, err
	}
	var p PowerLimits
	minimum, maximum, ret := d.GetPowerManagementLimitConstraints()
	if ret != nvml.SUCCESS {
		return PowerLimits{}, &Error{Op: "GetPowerManagementLimitConstraints", UUID: uuid, Code: Code(ret)}
	}
	p.Min, p.Max = Milliwatts(minimum), Milliwatts(maximum)
	for _, read := range []struct {
		op   string
		call func() (uint32, nvml.Return)
		into *Milliwatts
	}{
		{"GetPowerManagementDefaultLimit", d.GetPowerManagementDefaultLimit, &p.Default},
		{"GetPowerManagementLimit", d.GetPowerManagementLimit, &p.Current},
		{"GetEnforcedPowerLimit", d.GetEnforcedPowerLimit, &p.Enforced},
	} {
		v, ret := read.call()
		if ret != nvml.SUCCESS {
			return PowerLimits{}, &Error{Op: read.op, UUID: uuid, Code: Code(ret)}
		}
		*read.into = Milliwatts(v)
	}
	return p, nil
}

// PowerDraw implements Library.
func (n *NVML) PowerDraw(uuid string) (Milliwatts, error) {
	if err := n.enter("GetPowerUsage", uuid); err != nil {
		return 0, err
	}
	defer n.mu.RUnlock()
	d, err := n.handle(uuid)
	if err != nil {
		return 0, err
	}
	mw, ret := d.GetPowerUsage()
	if ret != nvml.SUCCESS {
		return 0, &Error{Op: "GetPowerUsage", UUID: uuid, Code: Code(ret)}
	}
	return Milliwatts(mw), nil
}

// violationStatusSymbol is the call PowerCapped prefers. NVML 13's header
// deprecates it (to go in CUDA 14) for the field value
// NVML_FI_DEV_PERF_POLICY_POWER, the same counter, which PowerCapped reads
// where the call is missing or not supported.
const violationStatusSymbol = "nvmlDeviceGetViolationStatus"

func (n *NVML) hasViolationStatus() bool {
	n.violationOnce.Do(func() {
		ext := n.lib.Extensions()
		n.violationStatus = ext != nil && ext.LookupSymbol(violationStatusSymbol) == nil
	})
	return n.violationStatus
}

// PowerCapped implements Library. It only reads (GetViolationStatus, or
// GetFieldValues for NVML_FI_DEV_PERF_POLICY_POWER).
func (n *NVML) PowerCapped(uuid string) (time.Duration, error) {
	if err := n.enter("GetViolationStatus", uuid); err != nil {
		return 0, err
	}
	defer n.mu.RUnlock()
	d, err := n.handle(uuid)
	if err != nil {
		return 0, err
	}
	var unsupported error
	if n.hasViolationStatus() {
		v, ret := d.GetViolationStatus(nvml.PERF_POLICY_POWER)
		switch ret {
		case nvml.SUCCESS:
			return nanoseconds(v.ViolationTime), nil
		case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
			unsupported = &Error{Op: "GetViolationStatus", UUID: uuid, Code: Code(ret)}
		default:
			return 0, &Error{Op: "GetViolationStatus", UUID: uuid, Code: Code(ret)}
		}
	}
	values := []nvml.FieldValue{{FieldId: nvml.FI_DEV_PERF_POLICY_POWER}}
	ret := d.GetFieldValues(values)
	if ret == nvml.SUCCESS {
		ret = nvml.Return(values[0].NvmlReturn)
	}
	if ret != nvml.SUCCESS {
		if unsupported != nil {
			return 0, unsupported // the field answers no better than the call it stands for
		}
		return 0, &Error{Op: "GetFieldValues", UUID: uuid, Code: Code(ret)}
	}
	v := values[0]
	raw := binary.NativeEndian.Uint64(v.Value[:]) // a C union, as the host lays it out
	switch nvml.ValueType(v.ValueType) {
	case nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, nvml.VALUE_TYPE_UNSIGNED_LONG:
		return nanoseconds(raw), nil
	case nvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return nanoseconds(uint64(max(int64(raw), 0))), nil // a negative count is none
	default:
		return 0, &Error{Op: "GetFieldValues", UUID: uuid, Code: CodeUnknown}
	}
}

// nanoseconds converts NVML's unsigned count, saturating where a Duration
// (292 years) would overflow.
func nanoseconds(ns uint64) time.Duration {
	if ns > math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// Processes implements Library. A list NVML does not support on this GPU
// (graphics on a compute-only board, say) is empty rather than an error;
// only when none of the three is supported does the call fail.
func (n *NVML) Processes(uuid string) ([]Process, error) {
	if err := n.enter("GetComputeRunningProcesses", uuid); err != nil {
		return nil, err
	}
	defer n.mu.RUnlock()
	d, err := n.handle(uuid)
	if err != nil {
		return nil, err
	}
	var procs []Process
	var unsupported error
	supported := false
	for _, list := range []struct {
		op   string
		kind ProcessKind
		call func() ([]nvml.ProcessInfo, nvml.Return)
	}{
		{"GetComputeRunningProcesses", Compute, d.GetComputeRunningProcesses},
		{"GetGraphicsRunningProcesses", Graphics, d.GetGraphicsRunningProcesses},
		{"GetMPSComputeRunningProcesses", MPSCompute, d.GetMPSComputeRunningProcesses},
	} {
		infos, ret := list.call()
		if ret == nvml.ERROR_NOT_SUPPORTED {
			if unsupported == nil {
				unsupported = &Error{Op: list.op, UUID: uuid, Code: Code(ret)}
			}
			continue
		}
		if ret != nvml.SUCCESS {
			return nil, &Error{Op: list.op, UUID: uuid, Code: Code(ret)}
		}
		supported = true
		for _, info := range infos {
			used := info.UsedGpuMemory
			if used == notAvailable {
				used = 0
			}
			procs = append(procs, Process{Kind: list.kind, PID: int(info.Pid), UsedMemory: used})
		}
	}
	if !supported {
		return nil, unsupported
	}
	return procs, nil
}

// SetPowerLimit implements Library.
func (n *NVML) SetPowerLimit(uuid string, limit Milliwatts) error {
	if err := n.enter("SetPowerManagementLimit", uuid); err != nil {
		return err
	}
	defer n.mu.RUnlock()
	// NVML takes a uint32; anything else would wrap into a different limit.
	if limit < 0 || limit > MaxMilliwatts {
		return &Error{Op: "SetPowerManagementLimit", UUID: uuid, Code: CodeInvalidArgument}
	}
	d, err := n.handle(uuid)
	if err != nil {
		return err
	}
	if ret := d.SetPowerManagementLimit(uint32(limit)); ret != nvml.SUCCESS {
		return &Error{Op: "SetPowerManagementLimit", UUID: uuid, Code: Code(ret)}
	}
	return nil
}

// MIGParent implements Library.
func (n *NVML) MIGParent(migUUID string) (string, error) {
	if err := n.enter("DeviceGetHandleByUUID", migUUID); err != nil {
		return "", err
	}
	defer n.mu.RUnlock()
	d, err := n.handle(migUUID)
	if err != nil {
		return "", err
	}
	isMIG, ret := d.IsMigDeviceHandle()
	if ret != nvml.SUCCESS {
		return "", &Error{Op: "IsMigDeviceHandle", UUID: migUUID, Code: Code(ret)}
	}
	if !isMIG {
		return "", &Error{Op: "IsMigDeviceHandle", UUID: migUUID, Code: CodeInvalidArgument}
	}
	parent, ret := d.GetDeviceHandleFromMigDeviceHandle()
	if ret != nvml.SUCCESS {
		return "", &Error{Op: "GetDeviceHandleFromMigDeviceHandle", UUID: migUUID, Code: Code(ret)}
	}
	uuid, ret := parent.GetUUID()
	if ret != nvml.SUCCESS {
		return "", &Error{Op: "GetUUID", UUID: migUUID, Code: Code(ret)}
	}
	return uuid, nil
}

// Shutdown implements Library. It waits for calls in flight.
func (n *NVML) Shutdown() error {
	if n.initErr != nil {
		return n.initErr
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return &Error{Op: "Shutdown", Code: CodeUninitialized}
	}
	n.closed = true
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return &Error{Op: "Shutdown", Code: Code(ret)}
	}
	return nil
}
