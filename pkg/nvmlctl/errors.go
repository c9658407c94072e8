package nvmlctl

import (
	"fmt"
	"strconv"
)

// Code is an NVML return code (nvmlReturn_t). The values are NVML's own, so a
// code from go-nvml converts with Code(ret) and a log line can be matched
// against NVIDIA's documentation.
type Code int

// NVML return codes, as nvml.h numbers them.
const (
	CodeSuccess               Code = 0
	CodeUninitialized         Code = 1
	CodeInvalidArgument       Code = 2
	CodeNotSupported          Code = 3
	CodeNoPermission          Code = 4
	CodeAlreadyInitialized    Code = 5
	CodeNotFound              Code = 6
	CodeInsufficientSize      Code = 7
	CodeInsufficientPower     Code = 8
	CodeDriverNotLoaded       Code = 9
	CodeTimeout               Code = 10
	CodeIRQIssue              Code = 11
	CodeLibraryNotFound       Code = 12
	CodeFunctionNotFound      Code = 13
	CodeCorruptedInforom      Code = 14
	CodeGPUIsLost             Code = 15
	CodeResetRequired         Code = 16
	CodeOperatingSystem       Code = 17
	CodeLibRMVersionMismatch  Code = 18
	CodeInUse                 Code = 19
	CodeMemory                Code = 20
	CodeNoData                Code = 21
	CodeVGPUECCNotSupported   Code = 22
	CodeInsufficientResources Code = 23
	CodeFreqNotSupported      Code = 24
	CodeArgumentVersion       Code = 25
	CodeDeprecated            Code = 26
	CodeNotReady              Code = 27
	CodeGPUNotFound           Code = 28
	CodeInvalidState          Code = 29
	CodeResetTypeNotSupported Code = 30
	CodeUnknown               Code = 999
)

// Targets for errors.Is. Each is a Code, and every *Error unwraps to its Code,
// so errors.Is(err, ErrNotPermitted) holds for any error chain that contains
// an NVML_ERROR_NO_PERMISSION from any call on any GPU.
var (
	// ErrNotPermitted: the agent lacks the privilege to change the limit
	// (not root, or the container is not privileged).
	ErrNotPermitted error = CodeNoPermission
	// ErrNotSupported: the GPU, or a MIG device, has no such control.
	ErrNotSupported error = CodeNotSupported
	// ErrGPULost: the GPU fell off the bus; it needs a reset or a reboot.
	ErrGPULost error = CodeGPUIsLost
	// ErrLibraryNotFound: libnvidia-ml.so.1 could not be loaded (no driver
	// on the node, or the container does not see it).
	ErrLibraryNotFound error = CodeLibraryNotFound
	// ErrNotFound: no GPU or MIG device has this UUID.
	ErrNotFound error = CodeNotFound
	// ErrUninitialized: NVML is not initialised (the Library was shut down).
	ErrUninitialized error = CodeUninitialized
	// ErrInvalidArgument: NVML refused an argument, for a power limit one
	// outside the GPU's constraints.
	ErrInvalidArgument error = CodeInvalidArgument
)

// codeNames are NVML's constant names: what an operator pastes into a search.
var codeNames = map[Code]string{
	CodeSuccess:               "NVML_SUCCESS",
	CodeUninitialized:         "NVML_ERROR_UNINITIALIZED",
	CodeInvalidArgument:       "NVML_ERROR_INVALID_ARGUMENT",
	CodeNotSupported:          "NVML_ERROR_NOT_SUPPORTED",
	CodeNoPermission:          "NVML_ERROR_NO_PERMISSION",
	CodeAlreadyInitialized:    "NVML_ERROR_ALREADY_INITIALIZED",
	CodeNotFound:              "NVML_ERROR_NOT_FOUND",
	CodeInsufficientSize:      "NVML_ERROR_INSUFFICIENT_SIZE",
	CodeInsufficientPower:     "NVML_ERROR_INSUFFICIENT_POWER",
	CodeDriverNotLoaded:       "NVML_ERROR_DRIVER_NOT_LOADED",
	CodeTimeout:               "NVML_ERROR_TIMEOUT",
	CodeIRQIssue:              "NVML_ERROR_IRQ_ISSUE",
	CodeLibraryNotFound:       "NVML_ERROR_LIBRARY_NOT_FOUND",
	CodeFunctionNotFound:      "NVML_ERROR_FUNCTION_NOT_FOUND",
	CodeCorruptedInforom:      "NVML_ERROR_CORRUPTED_INFOROM",
	CodeGPUIsLost:             "NVML_ERROR_GPU_IS_LOST",
	CodeResetRequired:         "NVML_ERROR_RESET_REQUIRED",
	CodeOperatingSystem:       "NVML_ERROR_OPERATING_SYSTEM",
	CodeLibRMVersionMismatch:  "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
	CodeInUse:                 "NVML_ERROR_IN_USE",
	CodeMemory:                "NVML_ERROR_MEMORY",
	CodeNoData:                "NVML_ERROR_NO_DATA",
	CodeVGPUECCNotSupported:   "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
	CodeInsufficientResources: "NVML_ERROR_INSUFFICIENT_RESOURCES",
	CodeFreqNotSupported:      "NVML_ERROR_FREQ_NOT_SUPPORTED",
	CodeArgumentVersion:       "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
	CodeDeprecated:            "NVML_ERROR_DEPRECATED",
	CodeNotReady:              "NVML_ERROR_NOT_READY",
	CodeGPUNotFound:           "NVML_ERROR_GPU_NOT_FOUND",
	CodeInvalidState:          "NVML_ERROR_INVALID_STATE",
	CodeResetTypeNotSupported: "NVML_ERROR_RESET_TYPE_NOT_SUPPORTED",
	CodeUnknown:               "NVML_ERROR_UNKNOWN",
}

// String returns NVML's name for the code, or "NVML return <n>" for a code
// newer than this table.
func (c Code) String() string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return "NVML return " + strconv.Itoa(int(c))
}

// Error makes a Code usable as an errors.Is target.
func (c Code) Error() string { return c.String() }

// Error is a failed NVML call. It keeps the return code: errors.Is matches it
// against the Err* targets, errors.As recovers it.
type Error struct {
	// Op is the NVML call that failed, as go-nvml names it
	// ("SetPowerManagementLimit").
	Op string
	// UUID is the device the call was about; empty for library-wide calls
	// (Init, DeviceGetCount).
	UUID string
	// Code is NVML's return code.
	Code Code
}

func (e *Error) Error() string {
	if e.UUID == "" {
		return fmt.Sprintf("nvml %s: %s", e.Op, e.Code)
	}
	return fmt.Sprintf("nvml %s %s: %s", e.Op, e.UUID, e.Code)
}

// Unwrap returns the Code, so errors.Is(err, ErrGPULost) works.
func (e *Error) Unwrap() error { return e.Code }
