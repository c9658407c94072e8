//go:build cgo

package nvmlctl_test

import (
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
)

// dgx is go-nvml's DGX H100 mock with the power and process calls it lacks,
// answering as the H100 probe did and enforcing the constraints on writes as
// NVML does. ret, when set, overrides every power call's return code.
type dgx struct {
	*server.Server
	mu     sync.Mutex
	limit  map[string]uint32 // by UUID
	writes int
	ret    nvml.Return
}

func newDGX(t *testing.T) *dgx {
	t.Helper()
	x := &dgx{Server: dgxh100.New(), limit: map[string]uint32{}, ret: nvml.SUCCESS}
	for _, dev := range x.Devices {
		d := dev.(*server.Device)
		uuid := d.UUID
		x.limit[uuid] = 700000
		d.GetPowerManagementLimitConstraintsFunc = func() (uint32, uint32, nvml.Return) {
			return 200000, 700000, x.code()
		}
		d.GetPowerManagementDefaultLimitFunc = func() (uint32, nvml.Return) { return 700000, x.code() }
		d.GetPowerManagementLimitFunc = func() (uint32, nvml.Return) {
			x.mu.Lock()
			defer x.mu.Unlock()
			return x.limit[uuid], x.ret
		}
		d.GetEnforcedPowerLimitFunc = d.GetPowerManagementLimitFunc
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) { return 121822, x.code() }
		d.SetPowerManagementLimitFunc = func(mw uint32) nvml.Return {
			x.mu.Lock()
			defer x.mu.Unlock()
			x.writes++
			if x.ret != nvml.SUCCESS {
				return x.ret
			}
			if mw < 200000 || mw > 700000 {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			x.limit[uuid] = mw
			return nvml.SUCCESS
		}
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, x.code() }
		d.GetGraphicsRunningProcessesFunc = d.GetComputeRunningProcessesFunc
		d.GetMPSComputeRunningProcessesFunc = d.GetComputeRunningProcessesFunc
		d.IsMigDeviceHandleFunc = func() (bool, nvml.Return) { return false, nvml.SUCCESS }
	}
	return x
}

func (x *dgx) code() nvml.Return {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.ret
}

func (x *dgx) device(i int) *server.Device { return x.Devices[i].(*server.Device) }

func open(t *testing.T, lib nvml.Interface) *nvmlctl.NVML {
	t.Helper()
	n, err := nvmlctl.Open(lib)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return n
}

func TestNVMLInventory(t *testing.T) {
	x := newDGX(t)
	x.device(5).MigMode = nvml.DEVICE_MIG_ENABLE
	devs, err := open(t, x).Devices()
	must(t, err)
	if len(devs) != 8 {
		t.Fatalf("%d devices, want the DGX H100's 8", len(devs))
	}
	for i, d := range devs {
		want := nvmlctl.Device{Index: i, UUID: x.device(i).UUID, Name: "NVIDIA H100 80GB HBM3", MIGEnabled: i == 5}
		if d != want {
			t.Errorf("device %d = %+v, want %+v", i, d, want)
		}
	}
}

func TestNVMLInventoryGoesOnPastALostGPU(t *testing.T) {
	x := newDGX(t)
	x.device(2).GetUUIDFunc = func() (string, nvml.Return) { return "", nvml.ERROR_GPU_IS_LOST }
	devs, err := open(t, x).Devices()
	if !errors.Is(err, nvmlctl.ErrGPULost) {
		t.Errorf("error = %v, want GPU lost", err)
	}
	if len(devs) != 7 {
		t.Errorf("%d devices, want the 7 that answered", len(devs))
	}
}

func TestNVMLPowerInMilliwatts(t *testing.T) {
	x := newDGX(t)
	n := open(t, x)
	uuid := x.device(0).UUID
	limits, err := n.PowerLimits(uuid)
	must(t, err)
	want := nvmlctl.PowerLimits{Min: 200000, Max: 700000, Default: 700000, Current: 700000, Enforced: 700000}
	if limits != want {
		t.Errorf("limits = %+v, want %+v", limits, want)
	}
	draw, err := n.PowerDraw(uuid)
	must(t, err)
	if draw != 121822 {
		t.Errorf("draw = %d mW, want 121822", draw)
	}
}

func TestNVMLSetPowerLimit(t *testing.T) {
	tests := []struct {
		name    string
		limit   nvmlctl.Milliwatts
		want    nvmlctl.Milliwatts // the limit read back
		wantErr error
		writes  int
	}{
		{"inside the constraints: written and read back", 250000, 250000, nil, 1},
		{"below the minimum: NVML refuses, limit unchanged", 150000, 700000, nvmlctl.ErrInvalidArgument, 1},
		{"negative: refused before NVML, which takes a uint32", -1, 700000, nvmlctl.ErrInvalidArgument, 0},
		{"beyond uint32: refused before it wraps into a small limit", 1<<32 + 250000, 700000, nvmlctl.ErrInvalidArgument, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newDGX(t)
			n := open(t, x)
			uuid := x.device(3).UUID
			err := n.SetPowerLimit(uuid, tt.limit)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			limits, err := n.PowerLimits(uuid)
			must(t, err)
			if limits.Current != tt.want {
				t.Errorf("limit reads %d mW, want %d", limits.Current, tt.want)
			}
			if x.writes != tt.writes {
				t.Errorf("%d NVML writes, want %d", x.writes, tt.writes)
			}
		})
	}
}

func TestNVMLErrorsKeepTheReturnCode(t *testing.T) {
	tests := []struct {
		name string
		ret  nvml.Return
		want error
	}{
		{"no permission: the agent is not privileged", nvml.ERROR_NO_PERMISSION, nvmlctl.ErrNotPermitted},
		{"not supported", nvml.ERROR_NOT_SUPPORTED, nvmlctl.ErrNotSupported},
		{"GPU fell off the bus", nvml.ERROR_GPU_IS_LOST, nvmlctl.ErrGPULost},
		{"not found", nvml.ERROR_NOT_FOUND, nvmlctl.ErrNotFound},
		{"uninitialized", nvml.ERROR_UNINITIALIZED, nvmlctl.ErrUninitialized},
		{"a code without a target is still an *Error with its code", nvml.ERROR_RESET_REQUIRED, nvmlctl.CodeResetRequired},
		{"a code newer than this package keeps its number", nvml.Return(77), nvmlctl.Code(77)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newDGX(t)
			n := open(t, x)
			uuid := x.device(1).UUID
			x.ret = tt.ret
			calls := map[string]error{
				"SetPowerLimit": n.SetPowerLimit(uuid, 300000),
			}
			_, calls["PowerLimits"] = n.PowerLimits(uuid)
			_, calls["PowerDraw"] = n.PowerDraw(uuid)
			for name, err := range calls {
				var nerr *nvmlctl.Error
				if !errors.Is(err, tt.want) || !errors.As(err, &nerr) || nerr.UUID != uuid || nerr.Code != nvmlctl.Code(tt.ret) {
					t.Errorf("%s: error = %#v, want code %d on %s matching %v", name, err, tt.ret, uuid, tt.want)
				}
			}
		})
	}
}

func TestNVMLFailedInitNeverCallsNVMLAgain(t *testing.T) {
	// A bare mock: every call other than Init panics, as a call into a
	// library that did not load would kill the agent.
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	n, err := nvmlctl.Open(lib)
	if !errors.Is(err, nvmlctl.ErrLibraryNotFound) {
		t.Fatalf("open: %v, want library not found", err)
	}
	if n == nil {
		t.Fatal("open returned no *NVML to report through")
	}
	const uuid = "GPU-04efd212-9e79-ab41-d439-40c9b52a0202"
	calls := map[string]func() error{
		"Devices":       func() error { _, err := n.Devices(); return err },
		"PowerLimits":   func() error { _, err := n.PowerLimits(uuid); return err },
		"PowerDraw":     func() error { _, err := n.PowerDraw(uuid); return err },
		"Processes":     func() error { _, err := n.Processes(uuid); return err },
		"SetPowerLimit": func() error { return n.SetPowerLimit(uuid, 300000) },
		"MIGParent":     func() error { _, err := n.MIGParent("MIG-x"); return err },
		"Shutdown":      n.Shutdown,
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, nvmlctl.ErrLibraryNotFound) {
			t.Errorf("%s: %v, want the Init error", name, err)
		}
	}
	if got := len(lib.InitCalls()); got != 1 {
		t.Errorf("Init called %d times, want once", got)
	}
}

func TestNVMLShutdown(t *testing.T) {
	x := newDGX(t)
	n := open(t, x)
	must(t, n.Shutdown())
	if _, err := n.Devices(); !errors.Is(err, nvmlctl.ErrUninitialized) {
		t.Errorf("devices after shutdown: %v, want uninitialized", err)
	}
	if err := n.Shutdown(); !errors.Is(err, nvmlctl.ErrUninitialized) {
		t.Errorf("second shutdown: %v, want uninitialized", err)
	}
	if got := len(x.ShutdownCalls()); got != 1 {
		t.Errorf("NVML Shutdown called %d times, want once", got)
	}
}

func TestNVMLProcesses(t *testing.T) {
	tests := []struct {
		name                    string
		compute, graphics, mps  []nvml.ProcessInfo
		computeRet, graphicsRet nvml.Return
		want                    []nvmlctl.Process
		wantErr                 error
	}{
		{name: "all three kinds, in that order",
			compute:  []nvml.ProcessInfo{{Pid: 440, UsedGpuMemory: 660602880}},
			graphics: []nvml.ProcessInfo{{Pid: 441, UsedGpuMemory: 1}},
			mps:      []nvml.ProcessInfo{{Pid: 442, UsedGpuMemory: 2}},
			want: []nvmlctl.Process{
				{Kind: nvmlctl.Compute, PID: 440, UsedMemory: 660602880},
				{Kind: nvmlctl.Graphics, PID: 441, UsedMemory: 1},
				{Kind: nvmlctl.MPSCompute, PID: 442, UsedMemory: 2},
			}},
		{name: "memory NVML will not tell reads as 0",
			compute: []nvml.ProcessInfo{{Pid: 440, UsedGpuMemory: ^uint64(0)}},
			want:    []nvmlctl.Process{{Kind: nvmlctl.Compute, PID: 440}}},
		{name: "graphics not supported on a compute board: the rest still count",
			compute: []nvml.ProcessInfo{{Pid: 440}}, graphicsRet: nvml.ERROR_NOT_SUPPORTED,
			want: []nvmlctl.Process{{Kind: nvmlctl.Compute, PID: 440}}},
		{name: "no permission on a list fails the call",
			computeRet: nvml.ERROR_NO_PERMISSION, wantErr: nvmlctl.ErrNotPermitted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newDGX(t)
			d := x.device(0)
			d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return tt.compute, tt.computeRet }
			d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return tt.graphics, tt.graphicsRet }
			d.GetMPSComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return tt.mps, nvml.SUCCESS }
			got, err := open(t, x).Processes(d.UUID)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			must(t, err)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("processes = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNVMLMIGParent(t *testing.T) {
	x := newDGX(t)
	const migUUID = "MIG-f4ce0000-0000-4000-9000-000003000000"
	parent := x.device(3)
	mig := &mock.Device{
		IsMigDeviceHandleFunc:                  func() (bool, nvml.Return) { return true, nvml.SUCCESS },
		GetDeviceHandleFromMigDeviceHandleFunc: func() (nvml.Device, nvml.Return) { return parent, nvml.SUCCESS },
	}
	byUUID := x.DeviceGetHandleByUUIDFunc
	x.DeviceGetHandleByUUIDFunc = func(uuid string) (nvml.Device, nvml.Return) {
		if uuid == migUUID {
			return mig, nvml.SUCCESS
		}
		return byUUID(uuid)
	}
	n := open(t, x)
	tests := []struct {
		name    string
		uuid    string
		want    string
		wantErr error
	}{
		{"a MIG device resolves to its GPU", migUUID, parent.UUID, nil},
		{"a whole GPU is not a MIG device", x.device(0).UUID, "", nvmlctl.ErrInvalidArgument},
		{"an unknown device keeps NVML's code", "MIG-nope", "", nvmlctl.ErrInvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := n.MIGParent(tt.uuid)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			must(t, err)
			if got != tt.want {
				t.Errorf("parent = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestNVMLPowerCapped(t *testing.T) {
	fieldValue := func(ret nvml.Return, typ nvml.ValueType, v uint64) func([]nvml.FieldValue) nvml.Return {
		return func(values []nvml.FieldValue) nvml.Return {
			if len(values) != 1 || values[0].FieldId != nvml.FI_DEV_PERF_POLICY_POWER {
				return nvml.ERROR_INVALID_ARGUMENT
			}
			values[0].NvmlReturn, values[0].ValueType = uint32(ret), uint32(typ)
			binary.NativeEndian.PutUint64(values[0].Value[:], v)
			return nvml.SUCCESS
		}
	}
	tests := []struct {
		name      string
		symbol    bool // libnvidia-ml exports nvmlDeviceGetViolationStatus
		violation nvml.Return
		field     func([]nvml.FieldValue) nvml.Return
		want      time.Duration
		wantErr   error
	}{
		{"violation status, in nanoseconds", true, nvml.SUCCESS, nil, 3*time.Second + 5, nil},
		{"a driver without the deprecated call reads the field", false, 0,
			fieldValue(nvml.SUCCESS, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, 7_000_000_000), 7 * time.Second, nil},
		{"the call not supported: the field", true, nvml.ERROR_NOT_SUPPORTED,
			fieldValue(nvml.SUCCESS, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, 42), 42, nil},
		{"neither supported", true, nvml.ERROR_NOT_SUPPORTED,
			fieldValue(nvml.ERROR_NOT_SUPPORTED, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, 0), 0, nvmlctl.ErrNotSupported},
		{"the field alone, not supported", false, 0,
			fieldValue(nvml.ERROR_NOT_SUPPORTED, nvml.VALUE_TYPE_UNSIGNED_LONG_LONG, 0), 0, nvmlctl.ErrNotSupported},
		{"a lost GPU is no fallback", true, nvml.ERROR_GPU_IS_LOST, nil, 0, nvmlctl.ErrGPULost},
		{"a field of an unexpected type", false, 0,
			fieldValue(nvml.SUCCESS, nvml.VALUE_TYPE_DOUBLE, 0), 0, nvmlctl.CodeUnknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newDGX(t)
			x.LookupSymbolFunc = func(symbol string) error {
				if symbol == "nvmlDeviceGetViolationStatus" && tt.symbol {
					return nil
				}
				return errors.New("undefined symbol")
			}
			d := x.device(3)
			d.GetViolationStatusFunc = func(p nvml.PerfPolicyType) (nvml.ViolationTime, nvml.Return) {
				if !tt.symbol {
					t.Fatal("called a symbol the library does not export")
				}
				if p != nvml.PERF_POLICY_POWER {
					return nvml.ViolationTime{}, nvml.ERROR_INVALID_ARGUMENT
				}
				return nvml.ViolationTime{ReferenceTime: 1, ViolationTime: uint64(3*time.Second + 5)}, tt.violation
			}
			d.GetFieldValuesFunc = tt.field
			n := open(t, x)
			got, err := n.PowerCapped(d.UUID)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) || got != tt.want {
				t.Errorf("PowerCapped = %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
			var nerr *nvmlctl.Error
			if err != nil && (!errors.As(err, &nerr) || nerr.UUID != d.UUID) {
				t.Errorf("error %#v does not name the GPU", err)
			}
			if x.writes != 0 {
				t.Errorf("reading the capped time wrote %d limits", x.writes)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
