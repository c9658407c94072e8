package nvmlctl

import (
	"fmt"
	"math"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/policy"
)

// Milliwatts is NVML's power unit; the same type the policy catalog uses, so
// a catalog range and an NVML reading compare without conversion.
type Milliwatts = policy.Milliwatts

// MaxMilliwatts is the largest power figure NVML carries: its limits and
// readings are uint32 milliwatts, and a larger one would wrap.
const MaxMilliwatts = Milliwatts(math.MaxUint32)

// Library is everything the agent asks of NVML. Devices are named by UUID
// ("GPU-…"), which, unlike an index, does not change when a GPU is added,
// removed or reordered. Implementations are safe for concurrent use.
type Library interface {
	// Devices lists the node's GPUs in NVML index order. A GPU that fails to
	// answer is left out and its error joined into the returned error, so
	// one lost GPU does not hide the others: check the slice even when the
	// error is non-nil.
	Devices() ([]Device, error)
	// PowerLimits reads a GPU's power-limit constraints, default, current
	// and enforced limits.
	PowerLimits(uuid string) (PowerLimits, error)
	// PowerDraw reads a GPU's current power draw.
	PowerDraw(uuid string) (Milliwatts, error)
	// PowerCapped reads how long, in all, the GPU was held below its
	// application clocks by its power limit: NVML's power-policy violation
	// time (nvmlDeviceGetViolationStatus with NVML_PERF_POLICY_POWER, the
	// same counter as the field NVML_FI_DEV_PERF_POLICY_POWER). The driver
	// keeps it, cumulative; it starts again from zero when the driver is
	// reloaded or the GPU reset. ErrNotSupported where the GPU does not keep
	// it. It reads only: no setting of the GPU changes.
	PowerCapped(uuid string) (time.Duration, error)
	// Processes lists the compute, graphics and MPS compute processes on a
	// GPU. On a MIG-enabled GPU it lists the processes of every MIG device.
	// A process that is both compute and graphics appears once per kind.
	Processes(uuid string) ([]Process, error)
	// SetPowerLimit sets a GPU's power management limit. A limit outside
	// the GPU's constraints fails with ErrInvalidArgument; the caller
	// clamps.
	SetPowerLimit(uuid string, limit Milliwatts) error
	// MIGParent returns the UUID ("GPU-…") of the GPU that the MIG device
	// migUUID ("MIG-…") lives on.
	MIGParent(migUUID string) (string, error)
	// Shutdown releases NVML. Every later call fails with ErrUninitialized.
	Shutdown() error
}

// Device is a GPU as NVML lists it.
type Device struct {
	// Index is NVML's index, the one the device plugin's index IDs use.
	Index int
	// UUID is "GPU-…".
	UUID string
	// Name is the product name exactly as NVML reports it
	// ("NVIDIA H100 80GB HBM3"); GFD's product label is derived from it.
	Name string
	// MIGEnabled is true when MIG mode is currently on. The power limit is
	// still the whole board's.
	MIGEnabled bool
}

// PowerLimits are a GPU's power-limit readings.
type PowerLimits struct {
	// Min and Max bound what SetPowerLimit accepts.
	Min, Max Milliwatts
	// Default is the factory limit, what a GPU gets back when restored.
	Default Milliwatts
	// Current is the management limit (GetPowerManagementLimit): what
	// SetPowerLimit wrote, by anyone, and so the value to compare with the
	// desired limit.
	Current Milliwatts
	// Enforced is what the GPU enforces now, the lowest of every limiter
	// (management limit, out-of-band limits); it can sit below Current and
	// must not be "corrected" by writing.
	Enforced Milliwatts
}

// Contains reports whether limit is settable on this GPU.
func (p PowerLimits) Contains(limit Milliwatts) bool {
	return limit >= p.Min && limit <= p.Max
}

// ProcessKind is which of NVML's process lists a process came from.
type ProcessKind int

const (
	// Compute is a CUDA process (GetComputeRunningProcesses).
	Compute ProcessKind = iota + 1
	// Graphics is a graphics process (GetGraphicsRunningProcesses).
	Graphics
	// MPSCompute is a CUDA process behind the MPS server
	// (GetMPSComputeRunningProcesses).
	MPSCompute
)

var processKindNames = map[ProcessKind]string{
	Compute:    "compute",
	Graphics:   "graphics",
	MPSCompute: "mps",
}

func (k ProcessKind) String() string {
	if name, ok := processKindNames[k]; ok {
		return name
	}
	return fmt.Sprintf("ProcessKind(%d)", int(k))
}

// MarshalText writes the kind as the state file and the probe spell it.
func (k ProcessKind) MarshalText() ([]byte, error) {
	name, ok := processKindNames[k]
	if !ok {
		return nil, fmt.Errorf("unknown process kind %d", int(k))
	}
	return []byte(name), nil
}

// UnmarshalText reads "compute", "graphics" or "mps".
func (k *ProcessKind) UnmarshalText(text []byte) error {
	for kind, name := range processKindNames {
		if string(text) == name {
			*k = kind
			return nil
		}
	}
	return fmt.Errorf("unknown process kind %q: want compute, graphics or mps", text)
}

// Process is a process running on a GPU.
type Process struct {
	Kind ProcessKind `json:"kind"`
	PID  int         `json:"pid"`
	// UsedMemory is the GPU memory the process holds, in bytes; 0 where NVML
	// cannot tell (it reports "not available" under some drivers and in
	// containers without the right privileges).
	UsedMemory uint64 `json:"usedGpuMemory"`
}
