package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/gpus"
)

// dgx builds an eight-GPU NVML server from go-nvml's mock Interface/Device and its H100/H200 GPU
// configurations, as go-nvml's dgxh100/dgxh200 servers do. (Those packages pull in
// github.com/google/uuid, which this module does not require.)
type dgx struct {
	*mock.Interface
	Devices []*mock.Device
	mem     []nvml.Memory
}

func newDGX(cfg gpus.Config) *dgx {
	s := &dgx{Interface: &mock.Interface{}}
	for i := 0; i < 8; i++ {
		i := i
		d := &mock.Device{}
		s.Devices = append(s.Devices, d)
		s.mem = append(s.mem, nvml.Memory{Total: cfg.MemoryMB * 1024 * 1024})
		uuid := fmt.Sprintf("GPU-%08x-0000-4000-8000-%012x", cfg.PciDeviceId, i)
		d.GetIndexFunc = func() (int, nvml.Return) { return i, nvml.SUCCESS }
		d.GetUUIDFunc = func() (string, nvml.Return) { return uuid, nvml.SUCCESS }
		d.GetNameFunc = func() (string, nvml.Return) { return cfg.Name, nvml.SUCCESS }
		d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return s.mem[i], nvml.SUCCESS }
	}
	s.InitFunc = func() nvml.Return { return nvml.SUCCESS }
	s.ShutdownFunc = func() nvml.Return { return nvml.SUCCESS }
	s.DeviceGetCountFunc = func() (int, nvml.Return) { return len(s.Devices), nvml.SUCCESS }
	s.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i < 0 || i >= len(s.Devices) {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		return s.Devices[i], nvml.SUCCESS
	}
	return s
}

func dgxh100() *dgx { return newDGX(gpus.H100_SXM5_80GB) }
func dgxh200() *dgx { return newDGX(gpus.H200_SXM5_141GB) }

// load gives every mock GPU live readings: GPU i runs worker pid 1000+i, GPU i is i*10 % busy.
// The mock servers ship identity and memory only; the readings are set through the mock's own
// *Func fields, as NVML would return them.
func load(srv *dgx, unsupported ...string) {
	skip := map[string]bool{}
	for _, u := range unsupported {
		skip[u] = true
	}
	for i, d := range srv.Devices {
		i := i
		d.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: uint32(i * 10), Memory: uint32(i * 5)}, nvml.SUCCESS
		}
		d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
			m := srv.mem[i]
			m.Used = uint64(i+1) << 30
			m.Free = m.Total - m.Used
			return m, nvml.SUCCESS
		}
		d.GetPowerUsageFunc = func() (uint32, nvml.Return) {
			if skip["power"] {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return 350_500, nvml.SUCCESS
		}
		d.GetClockInfoFunc = func(c nvml.ClockType) (uint32, nvml.Return) {
			if c != nvml.CLOCK_SM {
				return 0, nvml.ERROR_INVALID_ARGUMENT
			}
			return 1980, nvml.SUCCESS
		}
		d.GetTemperatureFunc = func(nvml.TemperatureSensors) (uint32, nvml.Return) { return uint32(40 + i), nvml.SUCCESS }
		d.GetCurrentClocksEventReasonsFunc = func() (uint64, nvml.Return) {
			if skip["throttle_reasons"] {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return 0x4 | 0x20, nvml.SUCCESS
		}
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
			return []nvml.ProcessInfo{{Pid: uint32(1000 + i), UsedGpuMemory: 1 << 30}}, nvml.SUCCESS
		}
	}
}

type fakeAgent struct{ byPID map[int]Proc }

func worker(rank int) Proc {
	return Proc{Session: "20260101_000000_abcdef", Pid: 1000 + rank, Role: "worker", DP: 0, PP: 0, TP: rank, EP: -1, Rank: rank}
}

func TestSampleMockServers(t *testing.T) {
	for _, tt := range []struct {
		name string
		srv  *dgx
		cfg  gpus.Config
	}{
		{"dgxh100", dgxh100(), gpus.H100_SXM5_80GB},
		{"dgxh200", dgxh200(), gpus.H200_SXM5_141GB},
	} {
		t.Run(tt.name, func(t *testing.T) {
			load(tt.srv)
			// The agent knows workers of ranks 0..3 by pid; GPUs 4..7 run pids it does not know.
			known := map[int]Proc{}
			for r := 0; r < 4; r++ {
				known[1000+r] = worker(r)
			}
			s := New(Config{Lib: tt.srv, Resolve: Resolver{ByPID: func(pid int) (Proc, bool) { p, ok := known[pid]; return p, ok }}})
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rows := s.Sample()
			if len(rows) != 8 {
				t.Fatalf("rows: got %d, want 8", len(rows))
			}
			for i, r := range rows {
				wantRank := -1
				if i < 4 {
					wantRank = i
				}
				if r.Proc.Rank != wantRank || r.Cols["rank"] != int64(wantRank) {
					t.Errorf("gpu %d: rank got %d/%v, want %d", i, r.Proc.Rank, r.Cols["rank"], wantRank)
				}
				if i < 4 && (r.Proc.Pid != 1000+i || r.Proc.Role != "worker") {
					t.Errorf("gpu %d: proc got %+v, want worker pid %d", i, r.Proc, 1000+i)
				}
				if got := r.Cols["util_gpu"]; got != float64(i*10) {
					t.Errorf("gpu %d util: got %v, want %d", i, got, i*10)
				}
				if got, want := r.Cols["mem_total_bytes"], int64(tt.cfg.MemoryMB*1024*1024); got != want {
					t.Errorf("gpu %d mem total: got %v, want %v", i, got, want)
				}
				if got := r.Cols["mem_used_bytes"]; got != int64(i+1)<<30 {
					t.Errorf("gpu %d mem used: got %v", i, got)
				}
				if got := r.Cols["power_w"]; got != 350.5 {
					t.Errorf("gpu %d power: got %v, want 350.5", i, got)
				}
				if got := r.Cols["throttle"]; got != "sw_power_cap|sw_thermal" {
					t.Errorf("gpu %d throttle: got %v", i, got)
				}
				if !strings.HasPrefix(r.Cols["gpu_uuid"].(string), "GPU-") || !strings.Contains(r.Cols["gpu_name"].(string), strings.ToUpper(tt.name[3:])) {
					t.Errorf("gpu %d identity: got %v %v", i, r.Cols["gpu_uuid"], r.Cols["gpu_name"])
				}
				if r.Seq != int64(i+1) {
					t.Errorf("gpu %d seq: got %d, want %d", i, r.Seq, i+1)
				}
			}
			gpus := s.GPUs()
			if len(gpus) != 8 || gpus[2].Processes[0].Rank != 2 || gpus[6].Processes[0].Rank != -1 {
				t.Errorf("status view: got %+v", gpus)
			}
			// A second round continues the sequence.
			if r := s.Sample(); r[0].Seq != 9 {
				t.Errorf("second round seq: got %d, want 9", r[0].Seq)
			}
		})
	}
}

func TestMapByUUID(t *testing.T) {
	srv := dgxh100()
	load(srv)
	uuid3, _ := srv.Devices[3].GetUUID()
	// Pids from another namespace mean nothing to the agent; the shim's gpu_uuid does.
	s := New(Config{Lib: srv, Resolve: Resolver{
		ByPID:  func(int) (Proc, bool) { return Proc{}, false },
		ByUUID: func(u string) (Proc, bool) { return worker(7), u == uuid3 },
	}})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	rows := s.Sample()
	for i, r := range rows {
		want := -1
		if i == 3 {
			want = 7
		}
		if r.Proc.Rank != want {
			t.Errorf("gpu %d: rank got %d, want %d", i, r.Proc.Rank, want)
		}
	}
}

func TestUnsupportedFieldsWarnOnce(t *testing.T) {
	srv := dgxh200()
	load(srv, "power", "throttle_reasons")
	var buf bytes.Buffer
	s := New(Config{Lib: srv, Log: slog.New(slog.NewTextHandler(&buf, nil))})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 3; round++ {
		for i, r := range s.Sample() {
			if _, ok := r.Cols["power_w"]; ok {
				t.Errorf("gpu %d: unsupported power_w present", i)
			}
			if _, ok := r.Cols["throttle_reasons"]; ok {
				t.Errorf("gpu %d: unsupported throttle_reasons present", i)
			}
			if _, ok := r.Cols["util_gpu"]; !ok {
				t.Errorf("gpu %d: supported util_gpu missing", i)
			}
		}
	}
	for _, f := range []string{"field=power", "field=throttle_reasons"} {
		if n := strings.Count(buf.String(), f); n != 1 {
			t.Errorf("warnings for %s: got %d, want 1\n%s", f, n, buf.String())
		}
	}
}

func TestMissingLibrary(t *testing.T) {
	lib := nvml.New(nvml.WithLibraryPath("/nonexistent/libnvidia-ml.so.1"))
	var buf syncBuf
	s := New(Config{Lib: lib, Interval: time.Millisecond, Log: slog.New(slog.NewTextHandler(&buf, nil)),
		Emit: func([]Row) { t.Error("emit without a library") }})
	if err := s.Start(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("start: got %v, want ErrUnavailable", err)
	}
	if s.On() || s.Sample() != nil || len(s.GPUs()) != 0 {
		t.Fatal("sampler must stay off")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	// Run logs its one line and then waits for ctx.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logText(&buf), "gpu sampling off"); {
		if time.Now().After(deadline) {
			t.Fatalf("no \"gpu sampling off\" line within 30 s:\n%s", logText(&buf))
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: got %v, want nil", err)
	}
	if n := strings.Count(logText(&buf), "\n"); n != 1 {
		t.Errorf("log lines: got %d, want 1:\n%s", n, logText(&buf))
	}
	if !strings.Contains(logText(&buf), "not found") {
		t.Errorf("log must say the library is missing: %s", logText(&buf))
	}
}

// syncBuf is a log sink the test may read while the sampler's goroutine writes to it.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func logText(s *syncBuf) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunEmits(t *testing.T) {
	srv := dgxh100()
	load(srv)
	got := make(chan []Row, 4)
	s := New(Config{Lib: srv, Interval: time.Millisecond, Emit: func(r []Row) {
		select {
		case got <- r:
		default:
		}
	}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	a, b := <-got, <-got
	if len(a) != 8 || b[0].Seq <= a[len(a)-1].Seq {
		t.Errorf("rounds: %d rows, seq %d then %d", len(a), a[len(a)-1].Seq, b[0].Seq)
	}
}

func TestThrottleNames(t *testing.T) {
	for _, tt := range []struct {
		mask uint64
		want string
	}{{0, ""}, {1, "gpu_idle"}, {0x28, "hw_slowdown|sw_thermal"}, {0x1000, "0x1000"}} {
		if got := ThrottleNames(tt.mask); got != tt.want {
			t.Errorf("ThrottleNames(%#x): got %q, want %q", tt.mask, got, tt.want)
		}
	}
}
