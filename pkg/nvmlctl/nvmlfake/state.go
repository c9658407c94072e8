package nvmlfake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
)

// State is everything a Fake knows, and the JSON of its state file:
//
//	{
//	  "devices": [
//	    {
//	      "index": 0,                          // NVML index, unique, >= 0
//	      "uuid": "GPU-…",                     // unique
//	      "name": "NVIDIA H100 80GB HBM3",     // as NVML reports it
//	      "minLimitMilliwatts": 200000,        // > 0
//	      "maxLimitMilliwatts": 700000,        // >= min, <= 2^32-1
//	      "defaultLimitMilliwatts": 700000,    // within [min, max]
//	      "limitMilliwatts": 700000,           // within [min, max]; 0 or absent: the default
//	      "enforcedLimitMilliwatts": 700000,   // 0 or absent: the limit
//	      "usageMilliwatts": 121822,           // power draw, >= 0
//	      "powerCappedNanoseconds": 0,         // optional: time held back by the power cap, >= 0
//	      "powerCappedUnsupported": false,     // optional: the GPU does not keep that time (NOT_SUPPORTED)
//	      "migEnabled": false,                 // optional
//	      "migDevices": ["MIG-…"],             // optional, needs migEnabled; unique
//	      "lost": false,                       // optional: the GPU fell off the bus
//	      "processes": [                       // optional, at most 1024
//	        {"kind": "compute", "pid": 440, "usedGpuMemory": 660602880}
//	      ]                                    // kind: compute, graphics or mps; pid 1..2^22
//	    }
//	  ]
//	}
//
// The field names are those of the NVML probe (testdata/h100-nvml-probe.json)
// and unknown fields are ignored, so a probe taken on a real node seeds a
// fake as it is. testdata/h100x2.json is an example.
type State struct {
	Devices []GPU `json:"devices"`
}

// GPU is one GPU of a Fake.
type GPU struct {
	Index      int                `json:"index"`
	UUID       string             `json:"uuid"`
	Name       string             `json:"name"`
	Min        nvmlctl.Milliwatts `json:"minLimitMilliwatts"`
	Max        nvmlctl.Milliwatts `json:"maxLimitMilliwatts"`
	Default    nvmlctl.Milliwatts `json:"defaultLimitMilliwatts"`
	Limit      nvmlctl.Milliwatts `json:"limitMilliwatts"`
	Enforced   nvmlctl.Milliwatts `json:"enforcedLimitMilliwatts"`
	Draw       nvmlctl.Milliwatts `json:"usageMilliwatts"`
	MIGEnabled bool               `json:"migEnabled,omitempty"`
	MIGDevices []string           `json:"migDevices,omitempty"`
	Lost       bool               `json:"lost,omitempty"`
	Processes  []nvmlctl.Process  `json:"processes,omitempty"`

	// PowerCapped is the driver's cumulative time the GPU was held below its
	// application clocks by its power limit (what PowerCapped reads), in
	// nanoseconds in the state file. A test grows it (AddPowerCapped, or the
	// state file) to make a cap bind; lowering it is the driver's counter
	// starting again (a driver reload, a GPU reset).
	PowerCapped time.Duration `json:"powerCappedNanoseconds,omitempty"`
	// PowerCappedUnsupported makes PowerCapped answer NOT_SUPPORTED, as on a
	// GPU that does not keep the time.
	PowerCappedUnsupported bool `json:"powerCappedUnsupported,omitempty"`
	// RefuseLimitWrites makes SetPowerLimit answer NO_PERMISSION, as a
	// driver does that rejects the write: in the state file, so a test can
	// make a running agent's writes fail (FailAlways only reaches the
	// process that set it).
	RefuseLimitWrites bool `json:"refuseLimitWrites,omitempty"`
}

// Bounds on a state file: it is read again before every call and may be
// written by another process, so it is parsed as untrusted input.
const (
	maxStateFile        = 1 << 20
	maxFakeGPUs         = 64
	maxFakeMIGDevices   = 7 // MIG's ceiling per GPU
	maxFakeProcesses    = 1024
	maxFakeName         = 96
	maxFakeUUID         = 96
	maxFakePID          = 1 << 22
	fakeStateFileFormat = "fake GPU state"
)

// h100Probe is the H100 the probe read on a real node (driver 580.159.04):
// the template of H100s.
var h100Probe = GPU{
	Name:     "NVIDIA H100 80GB HBM3",
	Min:      200000,
	Max:      700000,
	Default:  700000,
	Limit:    700000,
	Enforced: 700000,
	Draw:     121822,
}

// H100s returns n idle H100s at their default limit with indexes 0..n-1 and
// fixed UUIDs (UUID(i)), so tests and demos name the same GPUs every run.
func H100s(n int) []GPU {
	gpus := make([]GPU, n)
	for i := range gpus {
		gpus[i] = h100Probe
		gpus[i].Index = i
		gpus[i].UUID = UUID(i)
	}
	return gpus
}

// UUID is the UUID H100s gives the GPU with index i.
func UUID(i int) string {
	return fmt.Sprintf("GPU-f4ce0000-0000-4000-8000-%012x", i)
}

// MIGUUID is a MIG device UUID for MIG device j of the GPU with index i,
// for GPU.MIGDevices.
func MIGUUID(i, j int) string {
	return fmt.Sprintf("MIG-f4ce0000-0000-4000-9000-%06x%06x", i, j)
}

// parseState reads a state file's content, checks it and fills the
// implied fields (limit, enforced limit). Devices come back in index order.
func parseState(data []byte) (State, error) {
	var s State
	if len(data) > maxStateFile {
		return s, fmt.Errorf("%s: %d bytes, more than %d", fakeStateFileFormat, len(data), maxStateFile)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("%s: %w", fakeStateFileFormat, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return State{}, fmt.Errorf("%s: trailing data after the JSON object", fakeStateFileFormat)
	}
	if err := s.normalize(); err != nil {
		return State{}, err
	}
	return s, nil
}

// normalize fills implied fields, sorts by index and checks every invariant
// the fake relies on. It runs on every state the fake adopts, from a file or
// from a test, so an inconsistent GPU is an error up front rather than a
// strange answer later.
func (s *State) normalize() error {
	if len(s.Devices) > maxFakeGPUs {
		return fmt.Errorf("%s: %d devices, more than %d", fakeStateFileFormat, len(s.Devices), maxFakeGPUs)
	}
	uuids := map[string]bool{}
	indexes := map[int]bool{}
	for i := range s.Devices {
		g := &s.Devices[i]
		if g.Limit == 0 {
			g.Limit = g.Default
		}
		if g.Enforced == 0 {
			g.Enforced = g.Limit
		}
		if err := g.check(); err != nil {
			return fmt.Errorf("%s: device %d: %w", fakeStateFileFormat, i, err)
		}
		if indexes[g.Index] {
			return fmt.Errorf("%s: device %d: index %d used twice", fakeStateFileFormat, i, g.Index)
		}
		indexes[g.Index] = true
		for _, u := range append([]string{g.UUID}, g.MIGDevices...) {
			if uuids[u] {
				return fmt.Errorf("%s: device %d: uuid %q used twice", fakeStateFileFormat, i, u)
			}
			uuids[u] = true
		}
	}
	slices.SortFunc(s.Devices, func(a, b GPU) int { return a.Index - b.Index })
	return nil
}

func (g *GPU) check() error {
	switch {
	case g.Index < 0 || g.Index >= maxFakeGPUs:
		return fmt.Errorf("index %d out of range 0..%d", g.Index, maxFakeGPUs-1)
	case !validUUID(g.UUID, "GPU-"):
		return fmt.Errorf("uuid %q: want GPU-<uuid>", g.UUID)
	case g.Name == "" || len(g.Name) > maxFakeName:
		return fmt.Errorf("name %q: want 1..%d bytes", g.Name, maxFakeName)
	case g.Min <= 0 || g.Max < g.Min || g.Max > nvmlctl.MaxMilliwatts:
		return fmt.Errorf("constraints %d..%d mW: want 0 < min <= max <= %d", g.Min, g.Max, nvmlctl.MaxMilliwatts)
	case g.Default < g.Min || g.Default > g.Max:
		return fmt.Errorf("default limit %d mW outside %d..%d", g.Default, g.Min, g.Max)
	case g.Limit < g.Min || g.Limit > g.Max:
		return fmt.Errorf("limit %d mW outside %d..%d", g.Limit, g.Min, g.Max)
	case g.Enforced < 0 || g.Enforced > nvmlctl.MaxMilliwatts:
		return fmt.Errorf("enforced limit %d mW out of range", g.Enforced)
	case g.Draw < 0 || g.Draw > nvmlctl.MaxMilliwatts:
		return fmt.Errorf("power draw %d mW out of range", g.Draw)
	case g.PowerCapped < 0:
		return fmt.Errorf("power-capped time %d ns is negative", g.PowerCapped)
	case len(g.MIGDevices) > 0 && !g.MIGEnabled:
		return fmt.Errorf("MIG devices on a GPU with MIG disabled")
	case len(g.MIGDevices) > maxFakeMIGDevices:
		return fmt.Errorf("%d MIG devices, more than %d", len(g.MIGDevices), maxFakeMIGDevices)
	case len(g.Processes) > maxFakeProcesses:
		return fmt.Errorf("%d processes, more than %d", len(g.Processes), maxFakeProcesses)
	}
	for _, m := range g.MIGDevices {
		if !validUUID(m, "MIG-") {
			return fmt.Errorf("MIG device %q: want MIG-<uuid>", m)
		}
	}
	for _, p := range g.Processes {
		if p.PID <= 0 || p.PID > maxFakePID {
			return fmt.Errorf("process pid %d out of range 1..%d", p.PID, maxFakePID)
		}
		if _, err := p.Kind.MarshalText(); err != nil { // not a kind NVML lists
			return fmt.Errorf("process %d: kind %d unknown", p.PID, p.Kind)
		}
	}
	return nil
}

// validUUID accepts what NVML could print: the prefix and printable ASCII
// without spaces. The fake does not insist on the 8-4-4-4-12 shape so that
// tests can use readable names ("GPU-a").
func validUUID(u, prefix string) bool {
	if len(u) <= len(prefix) || len(u) > maxFakeUUID || !strings.HasPrefix(u, prefix) {
		return false
	}
	for _, c := range []byte(u) {
		if c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

func readState(path string) (State, error) {
	f, err := os.Open(path)
	if err != nil {
		return State{}, fmt.Errorf("read fake state: %w", err)
	}
	defer func() { _ = f.Close() }() // read-only: a failed close loses nothing
	data, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return State{}, fmt.Errorf("read fake state %s: %w", path, err)
	}
	s, err := parseState(data)
	if err != nil {
		return State{}, fmt.Errorf("read %s: %w", path, err)
	}
	return s, nil
}

// writeState replaces path atomically (temp file, fsync, rename), so a
// reader in another process sees the old state or the new one, never half.
func writeState(path string, s State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode fake state: %w", err)
	}
	data = append(data, '\n')
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // gone after the rename; cleans up on failure
	// The state is fake hardware, not a secret: readable by a demo running
	// as another user.
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write fake state %s: %w", path, err)
	}
	return nil
}
