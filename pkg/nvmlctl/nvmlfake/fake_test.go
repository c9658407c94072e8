package nvmlfake

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamo-power/gpu-power/pkg/nvmlctl"
)

var (
	gpu0 = UUID(0)
	gpu1 = UUID(1)
	mig1 = MIGUUID(1, 0)
)

// twoH100s is a node with two H100s, the second in MIG mode with one MIG device.
func twoH100s() []GPU {
	gpus := H100s(2)
	gpus[1].MIGEnabled = true
	gpus[1].MIGDevices = []string{mig1}
	return gpus
}

func TestFakeAnswersLikeNVML(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, f *Fake)
		call    func(l nvmlctl.Library) (any, error)
		want    any
		wantErr error // errors.Is target; nil: must succeed
	}{
		{"inventory in index order, with MIG mode",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.Devices() },
			[]nvmlctl.Device{
				{Index: 0, UUID: gpu0, Name: "NVIDIA H100 80GB HBM3"},
				{Index: 1, UUID: gpu1, Name: "NVIDIA H100 80GB HBM3", MIGEnabled: true},
			}, nil},
		{"an H100 reads as the probe did, in milliwatts",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.PowerLimits(gpu0) },
			nvmlctl.PowerLimits{Min: 200000, Max: 700000, Default: 700000, Current: 700000, Enforced: 700000}, nil},
		{"draw is the probe's idle reading",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.PowerDraw(gpu0) },
			nvmlctl.Milliwatts(121822), nil},
		{"no time held back by the cap on an idle GPU",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.PowerCapped(gpu0) },
			time.Duration(0), nil},
		{"the time held back by the cap is what the world added",
			func(t *testing.T, f *Fake) {
				must(t, f.AddPowerCapped(gpu0, time.Second))
				must(t, f.AddPowerCapped(gpu0, 500*time.Millisecond))
			},
			func(l nvmlctl.Library) (any, error) { return l.PowerCapped(gpu0) },
			1500 * time.Millisecond, nil},
		{"a GPU that does not keep the time is not supported",
			func(t *testing.T, f *Fake) {
				must(t, f.Update(gpu0, func(g *GPU) { g.PowerCappedUnsupported = true }))
			},
			func(l nvmlctl.Library) (any, error) { return l.PowerCapped(gpu0) },
			nil, nvmlctl.ErrNotSupported},
		{"the time held back by the cap is the board's, not a MIG device's",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.PowerCapped(mig1) },
			nil, nvmlctl.ErrNotSupported},
		{"a limit inside the constraints is current and enforced",
			nil,
			func(l nvmlctl.Library) (any, error) {
				if err := l.SetPowerLimit(gpu0, 250000); err != nil {
					return nil, err
				}
				return l.PowerLimits(gpu0)
			},
			nvmlctl.PowerLimits{Min: 200000, Max: 700000, Default: 700000, Current: 250000, Enforced: 250000}, nil},
		{"the minimum itself is settable",
			nil,
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(gpu0, 200000) },
			nil, nil},
		{"below the minimum is an invalid argument, as in NVML",
			nil,
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(gpu0, 199999) },
			nil, nvmlctl.ErrInvalidArgument},
		{"above the maximum is an invalid argument",
			nil,
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(gpu0, 700001) },
			nil, nvmlctl.ErrInvalidArgument},
		{"an unknown GPU is not found",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.PowerLimits("GPU-nope") },
			nil, nvmlctl.ErrNotFound},
		{"power of a MIG device is not supported: the limit is the board's",
			nil,
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(mig1, 300000) },
			nil, nvmlctl.ErrNotSupported},
		{"a MIG device resolves to its GPU",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.MIGParent(mig1) },
			gpu1, nil},
		{"a GPU UUID is not a MIG device",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.MIGParent(gpu0) },
			nil, nvmlctl.ErrInvalidArgument},
		{"an unknown MIG device is not found",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.MIGParent("MIG-nope") },
			nil, nvmlctl.ErrNotFound},
		{"processes of every kind, as set",
			func(t *testing.T, f *Fake) {
				must(t, f.SetProcesses(gpu0,
					nvmlctl.Process{Kind: nvmlctl.Compute, PID: 440, UsedMemory: 660602880},
					nvmlctl.Process{Kind: nvmlctl.MPSCompute, PID: 441}))
			},
			func(l nvmlctl.Library) (any, error) { return l.Processes(gpu0) },
			[]nvmlctl.Process{{Kind: nvmlctl.Compute, PID: 440, UsedMemory: 660602880}, {Kind: nvmlctl.MPSCompute, PID: 441}},
			nil},
		{"an idle GPU has no processes",
			nil,
			func(l nvmlctl.Library) (any, error) { return l.Processes(gpu1) },
			[]nvmlctl.Process(nil), nil},
		{"someone else's limit is what the next read sees",
			func(t *testing.T, f *Fake) { must(t, f.SetLimitExternally(gpu0, 300000)) },
			func(l nvmlctl.Library) (any, error) {
				p, err := l.PowerLimits(gpu0)
				return p.Current, err
			},
			nvmlctl.Milliwatts(300000), nil},
		{"an injected permission error keeps its code",
			func(_ *testing.T, f *Fake) {
				f.FailNext(OpSetPowerLimit, gpu0, nvmlctl.ErrNotPermitted)
			},
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(gpu0, 300000) },
			nil, nvmlctl.ErrNotPermitted},
		{"a fault on another GPU leaves this one alone",
			func(_ *testing.T, f *Fake) {
				f.FailNext(OpSetPowerLimit, gpu1, nvmlctl.ErrNotPermitted)
			},
			func(l nvmlctl.Library) (any, error) { return nil, l.SetPowerLimit(gpu0, 300000) },
			nil, nil},
		{"FailNext fails once",
			func(t *testing.T, f *Fake) {
				f.FailNext(OpPowerDraw, "", nvmlctl.ErrNotSupported)
				if _, err := f.PowerDraw(gpu0); !errors.Is(err, nvmlctl.ErrNotSupported) {
					t.Fatalf("first call: %v, want not supported", err)
				}
			},
			func(l nvmlctl.Library) (any, error) { return l.PowerDraw(gpu0) },
			nvmlctl.Milliwatts(121822), nil},
		{"FailAlways fails every call",
			func(t *testing.T, f *Fake) {
				f.FailAlways(OpPowerDraw, gpu0, nvmlctl.ErrNotSupported)
				for range 3 {
					if _, err := f.PowerDraw(gpu0); !errors.Is(err, nvmlctl.ErrNotSupported) {
						t.Fatalf("call: %v, want not supported", err)
					}
				}
			},
			func(l nvmlctl.Library) (any, error) { return l.PowerDraw(gpu0) },
			nil, nvmlctl.ErrNotSupported},
		{"an injected non-NVML error comes back as it is",
			func(_ *testing.T, f *Fake) { f.FailNext(OpProcesses, gpu0, os.ErrDeadlineExceeded) },
			func(l nvmlctl.Library) (any, error) { return l.Processes(gpu0) },
			nil, os.ErrDeadlineExceeded},
		{"a lost GPU fails every call that names it",
			func(t *testing.T, f *Fake) { must(t, f.LoseGPU(gpu0)) },
			func(l nvmlctl.Library) (any, error) { return l.PowerLimits(gpu0) },
			nil, nvmlctl.ErrGPULost},
		{"a lost GPU's MIG devices are lost with it",
			func(t *testing.T, f *Fake) { must(t, f.LoseGPU(gpu1)) },
			func(l nvmlctl.Library) (any, error) { return l.MIGParent(mig1) },
			nil, nvmlctl.ErrGPULost},
		{"every call after Shutdown is uninitialized",
			func(t *testing.T, f *Fake) { must(t, f.Shutdown()) },
			func(l nvmlctl.Library) (any, error) { return l.Devices() },
			nil, nvmlctl.ErrUninitialized},
		{"Shutdown twice is uninitialized, as NVML's refcount says",
			func(t *testing.T, f *Fake) { must(t, f.Shutdown()) },
			func(l nvmlctl.Library) (any, error) { return nil, l.Shutdown() },
			nil, nvmlctl.ErrUninitialized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New(twoH100s()...)
			if tt.prepare != nil {
				tt.prepare(t, f)
			}
			got, err := tt.call(f)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error = %v, want one matching %v", err, tt.wantErr)
				}
				var nerr *nvmlctl.Error
				if errors.As(tt.wantErr, new(nvmlctl.Code)) && !errors.As(err, &nerr) {
					t.Errorf("error %v is not an *nvmlctl.Error", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tt.want != nil && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestFakeDevicesGoOnPastALostGPU(t *testing.T) {
	f := New(H100s(3)...)
	must(t, f.LoseGPU(UUID(1)))
	devs, err := f.Devices()
	if !errors.Is(err, nvmlctl.ErrGPULost) {
		t.Fatalf("error = %v, want GPU lost", err)
	}
	if !strings.Contains(err.Error(), UUID(1)) {
		t.Errorf("error %q does not name the lost GPU", err)
	}
	if len(devs) != 2 || devs[0].Index != 0 || devs[1].Index != 2 {
		t.Errorf("devices = %+v, want GPUs 0 and 2", devs)
	}
}

func TestFakeRejectedWriteChangesNothing(t *testing.T) {
	f := New(H100s(1)...)
	f.FailNext(OpSetPowerLimit, gpu0, nvmlctl.ErrNotPermitted)
	_ = f.SetPowerLimit(gpu0, 300000)
	_ = f.SetPowerLimit(gpu0, 900000)
	g, err := f.GPU(gpu0)
	must(t, err)
	if g.Limit != 700000 {
		t.Errorf("limit = %d mW after two refused writes, want 700000", g.Limit)
	}
	want := []Call{
		{Op: OpSetPowerLimit, UUID: gpu0, Limit: 300000},
		{Op: OpSetPowerLimit, UUID: gpu0, Limit: 900000},
	}
	if got := f.Calls(); !reflect.DeepEqual(got, want) {
		t.Errorf("calls = %+v, want %+v", got, want)
	}
}

func TestFakeErrorNamesCallGPUAndCode(t *testing.T) {
	f := New(H100s(1)...)
	f.FailNext(OpSetPowerLimit, gpu0, nvmlctl.ErrNotPermitted)
	err := f.SetPowerLimit(gpu0, 300000)
	want := "nvml SetPowerManagementLimit " + gpu0 + ": NVML_ERROR_NO_PERMISSION"
	if err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
	var nerr *nvmlctl.Error
	if !errors.As(err, &nerr) || nerr.Code != nvmlctl.CodeNoPermission || nerr.UUID != gpu0 {
		t.Errorf("error = %#v, want code 4 on %s", nerr, gpu0)
	}
}

func TestFakeConcurrentUse(t *testing.T) {
	f := New(H100s(8)...)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for w := range 50 {
				_ = f.SetPowerLimit(UUID(i), nvmlctl.Milliwatts(200000+w*1000))
				_, _ = f.PowerLimits(UUID(i))
				_, _ = f.Devices()
			}
		})
	}
	wg.Wait()
	for i := range 8 {
		g, err := f.GPU(UUID(i))
		must(t, err)
		if g.Limit != 249000 {
			t.Errorf("GPU %d limit = %d, want the last write 249000", i, g.Limit)
		}
	}
}

func TestFakeStateFileIsSharedWithAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	agent := New(twoH100s()...)
	must(t, agent.PersistTo(path))

	// The "other process": a second Fake on the same file.
	world, err := NewFromFile(path)
	must(t, err)

	must(t, agent.SetPowerLimit(gpu0, 250000))
	g, err := world.GPU(gpu0)
	must(t, err)
	if g.Limit != 250000 {
		t.Errorf("other process reads limit %d, want the agent's 250000", g.Limit)
	}

	must(t, world.SetProcesses(gpu1, nvmlctl.Process{Kind: nvmlctl.Compute, PID: 4242}))
	must(t, world.SetLimitExternally(gpu0, 400000))
	procs, err := agent.Processes(gpu1)
	must(t, err)
	if len(procs) != 1 || procs[0].PID != 4242 {
		t.Errorf("agent sees processes %+v, want pid 4242", procs)
	}
	limits, err := agent.PowerLimits(gpu0)
	must(t, err)
	if limits.Current != 400000 {
		t.Errorf("agent reads limit %d, want the drifted 400000", limits.Current)
	}

	must(t, world.AddPowerCapped(gpu0, 2*time.Second))
	if capped, err := agent.PowerCapped(gpu0); err != nil || capped != 2*time.Second {
		t.Errorf("agent reads power-capped time %v, %v, want the world's 2s", capped, err)
	}

	// The file on disk is the schema, readable by anything.
	data, err := os.ReadFile(path)
	must(t, err)
	s, err := parseState(data)
	must(t, err)
	if s.Devices[0].Limit != 400000 || len(s.Devices[1].Processes) != 1 || s.Devices[0].PowerCapped != 2*time.Second ||
		!strings.Contains(string(data), `"powerCappedNanoseconds": 2000000000`) {
		t.Errorf("file holds %+v", s)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".gpus.json.tmp*")); len(leftovers) != 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

// TestFakeStateFileLosesNoConcurrentChange: two processes (two Fakes on one
// file) change the GPUs at once, as the agent and a test's GPU feeder do;
// every change of both is kept.
func TestFakeStateFileLosesNoConcurrentChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	agent := New(twoH100s()...)
	must(t, agent.PersistTo(path))
	world, err := NewFromFile(path)
	must(t, err)

	const each = 50
	addProcess := func(f *Fake, pid int) error {
		return f.Update(gpu0, func(g *GPU) {
			g.Processes = append(g.Processes, nvmlctl.Process{Kind: nvmlctl.Compute, PID: pid})
		})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3*each)
	wg.Go(func() {
		for i := range each {
			errs <- addProcess(agent, 1+i)
			errs <- agent.SetPowerLimit(gpu1, nvmlctl.Milliwatts(200000+i*1000))
		}
	})
	wg.Go(func() {
		for i := range each {
			errs <- addProcess(world, 1+each+i)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err)
	}
	g, err := world.GPU(gpu0)
	must(t, err)
	if len(g.Processes) != 2*each {
		t.Errorf("GPU 0 has %d processes, want all %d added by both processes", len(g.Processes), 2*each)
	}
	if g, _ := world.GPU(gpu1); g.Limit != nvmlctl.Milliwatts(200000+(each-1)*1000) {
		t.Errorf("GPU 1 limit = %d, want the agent's last write %d", g.Limit, 200000+(each-1)*1000)
	}
}

func TestFakeStateFileBrokenByAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gpus.json")
	f := New(H100s(1)...)
	must(t, f.PersistTo(path))
	must(t, os.WriteFile(path, []byte("{"), 0o644))
	if _, err := f.PowerLimits(gpu0); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("error = %v, want one naming %s", err, path)
	}
}

func TestFakeFromTestdata(t *testing.T) {
	tests := []struct {
		file    string
		devices int
		gpu     string
		limit   nvmlctl.Milliwatts
		procs   int
	}{
		{"h100x2.json", 2, "GPU-f4ce0000-0000-4000-8000-000000000001", 250000, 0},
		{"h100-nvml-probe.json", 1, "GPU-04efd212-9e79-ab41-d439-40c9b52a0202", 700000, 1},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			// A copy: the fake writes, testdata stays as it is.
			data, err := os.ReadFile(filepath.Join("testdata", tt.file))
			must(t, err)
			path := filepath.Join(t.TempDir(), tt.file)
			must(t, os.WriteFile(path, data, 0o644))
			f, err := NewFromFile(path)
			must(t, err)
			devs, err := f.Devices()
			must(t, err)
			if len(devs) != tt.devices {
				t.Errorf("%d devices, want %d", len(devs), tt.devices)
			}
			l, err := f.PowerLimits(tt.gpu)
			must(t, err)
			if l.Current != tt.limit || l.Enforced != tt.limit {
				t.Errorf("limits = %+v, want current and enforced %d", l, tt.limit)
			}
			p, err := f.Processes(tt.gpu)
			must(t, err)
			if len(p) != tt.procs {
				t.Errorf("processes = %+v, want %d", p, tt.procs)
			}
		})
	}
}

func TestParseFakeStateRejects(t *testing.T) {
	const ok = `"index":0,"uuid":"GPU-a","name":"H100","minLimitMilliwatts":200000,"maxLimitMilliwatts":700000,"defaultLimitMilliwatts":700000`
	tests := []struct {
		name, json, want string
	}{
		{"not JSON", `{`, "unexpected EOF"},
		{"trailing data", `{"devices":[]} {}`, "trailing data"},
		{"GPU UUID without its prefix", `{"devices":[{` + strings.Replace(ok, "GPU-a", "a", 1) + `}]}`, "want GPU-<uuid>"},
		{"min above max", `{"devices":[{` + strings.Replace(ok, `"minLimitMilliwatts":200000`, `"minLimitMilliwatts":800000`, 1) + `}]}`, "constraints"},
		{"limit outside the constraints", `{"devices":[{` + ok + `,"limitMilliwatts":900000}]}`, "limit 900000 mW outside"},
		{"limit beyond NVML's uint32", `{"devices":[{` + strings.Replace(ok, `"maxLimitMilliwatts":700000`, `"maxLimitMilliwatts":4294967296`, 1) + `}]}`, "constraints"},
		{"same UUID twice", `{"devices":[{` + ok + `},{` + strings.Replace(ok, `"index":0`, `"index":1`, 1) + `}]}`, "used twice"},
		{"same index twice", `{"devices":[{` + ok + `},{` + strings.Replace(ok, "GPU-a", "GPU-b", 1) + `}]}`, "index 0 used twice"},
		{"MIG devices with MIG off", `{"devices":[{` + ok + `,"migDevices":["MIG-a"]}]}`, "MIG disabled"},
		{"a process without a pid", `{"devices":[{` + ok + `,"processes":[{"kind":"compute","pid":0}]}]}`, "pid 0"},
		{"a process of an unknown kind", `{"devices":[{` + ok + `,"processes":[{"kind":"video","pid":1}]}]}`, "unknown process kind"},
		{"a negative power-capped time", `{"devices":[{` + ok + `,"powerCappedNanoseconds":-1}]}`, "power-capped time -1 ns is negative"},
		{"a UUID with a control character", `{"devices":[{` + strings.Replace(ok, "GPU-a", `GPU-a\n`, 1) + `}]}`, "want GPU-<uuid>"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseState([]byte(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestFakeUpdateKeepsTheRules(t *testing.T) {
	f := New(H100s(1)...)
	if err := f.SetLimitExternally(gpu0, 100000); err == nil {
		t.Error("an external limit below the minimum was accepted")
	}
	if err := f.Update("GPU-nope", func(*GPU) {}); !errors.Is(err, nvmlctl.ErrNotFound) {
		t.Errorf("update of an unknown GPU: %v, want not found", err)
	}
}

func FuzzParseFakeState(f *testing.F) {
	for _, name := range []string{"h100x2.json", "h100-nvml-probe.json"} {
		data, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"devices":[{"index":3,"uuid":"GPU-x","name":"n","minLimitMilliwatts":1,"maxLimitMilliwatts":1,"defaultLimitMilliwatts":1}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseState(data)
		if err != nil {
			return
		}
		// Whatever is accepted is a fake that answers without panicking.
		fake := New(s.Devices...)
		devs, _ := fake.Devices()
		for _, g := range s.Devices {
			l, err := fake.PowerLimits(g.UUID)
			if err == nil && (l.Current < l.Min || l.Current > l.Max) {
				t.Fatalf("accepted limit %d outside %d..%d", l.Current, l.Min, l.Max)
			}
			_, _ = fake.Processes(g.UUID)
			for _, m := range g.MIGDevices {
				if parent, err := fake.MIGParent(m); err == nil && parent != g.UUID {
					t.Fatalf("MIG %s resolves to %s, want %s", m, parent, g.UUID)
				}
			}
		}
		if len(devs) > len(s.Devices) {
			t.Fatalf("%d devices listed from %d", len(devs), len(s.Devices))
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestFakeCallRecordIsBounded(t *testing.T) {
	f := New(H100s(1)...)
	const n = 10_000
	for w := range n {
		_ = f.SetPowerLimit(UUID(0), nvmlctl.Milliwatts(200000+w%500*1000))
	}
	calls := f.Calls()
	if len(calls) != 4096 {
		t.Fatalf("%d calls recorded; want the last 4096", len(calls))
	}
	if last, want := calls[len(calls)-1].Limit, nvmlctl.Milliwatts(200000+(n-1)%500*1000); last != want {
		t.Errorf("last recorded call set %d mW; want the last one made, %d mW", last, want)
	}
	if first, want := calls[0].Limit, nvmlctl.Milliwatts(200000+(n-4096)%500*1000); first != want {
		t.Errorf("first recorded call set %d mW; want call %d's %d mW", first, n-4096, want)
	}
}

// TestRefuseLimitWritesReachesAnotherProcess is how a test makes a running
// agent's writes fail: the refusal is in the state file, so a second Fake on
// that file (the agent's) sees it, and lifting it lets writes through again.
func TestRefuseLimitWritesReachesAnotherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nvml.json")
	gpus := H100s(1)
	if err := New(gpus...).PersistTo(path); err != nil {
		t.Fatal(err)
	}
	test, err := NewFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := NewFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	uuid := gpus[0].UUID
	if err := test.Update(uuid, func(g *GPU) { g.RefuseLimitWrites = true }); err != nil {
		t.Fatal(err)
	}
	var nvmlErr *nvmlctl.Error
	if err := agent.SetPowerLimit(uuid, 400_000); !errors.As(err, &nvmlErr) || nvmlErr.Code != nvmlctl.CodeNoPermission {
		t.Fatalf("write while refused: %v; want NO_PERMISSION", err)
	}
	if g, _ := test.GPU(uuid); g.Limit == 400_000 {
		t.Fatal("a refused write changed the limit")
	}
	if err := test.Update(uuid, func(g *GPU) { g.RefuseLimitWrites = false }); err != nil {
		t.Fatal(err)
	}
	if err := agent.SetPowerLimit(uuid, 400_000); err != nil {
		t.Fatalf("write after the refusal was lifted: %v", err)
	}
}
