// Package gpu samples the host's NVIDIA GPUs through NVML (github.com/NVIDIA/go-nvml) at a fixed
// interval and turns each sample into a row of the gpu_metrics table, attributed to the vLLM
// process (and so the rank) running on that GPU. Without a driver or library the sampler logs one
// line and stays off; everything else in the agent keeps running.
package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Kind and Table name the event kind and table the sampler feeds.
const (
	Kind  = "gpu"
	Table = "gpu_metrics"
)

// DefaultInterval is the sampling period when none is configured.
const DefaultInterval = time.Second

// ErrUnavailable means NVML cannot be used on this host (no library, no driver, no permission).
var ErrUnavailable = errors.New("nvml unavailable")

// Proc identifies the vLLM process a GPU row is attributed to. Ranks unknown are -1.
type Proc struct {
	Session string
	Pid     int
	Role    string
	DP, PP  int
	TP, EP  int
	Rank    int // global worker rank
}

// NoProc is the identity of a GPU no known vLLM process runs on.
var NoProc = Proc{Pid: 0, DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}

// Resolver maps what NVML sees to the processes the agent knows. ByPID is tried first (NVML's pid
// of a compute process); ByUUID covers processes in another pid namespace (containers), using the
// gpu_uuid the shim reported in its hello. Either may be nil.
type Resolver struct {
	ByPID  func(pid int) (Proc, bool)
	ByUUID func(uuid string) (Proc, bool)
}

// Row is one GPU's sample, ready to become a gpu_metrics event: Cols holds the table's own columns
// (a field the GPU does not support is absent), Proc the common identity columns.
type Row struct {
	Proc Proc
	Seq  int64
	TsNS int64
	Cols map[string]any
}

// Process is one compute process NVML reports on a GPU, with its mapped identity when known.
type Process struct {
	Pid       int    `json:"pid"`
	UsedBytes uint64 `json:"used_bytes"`
	Role      string `json:"role,omitempty"`
	Rank      int    `json:"rank"`
}

// Info is the latest view of one GPU, for `pmagent status`.
type Info struct {
	Index         int       `json:"index"`
	UUID          string    `json:"uuid"`
	Name          string    `json:"name"`
	UtilGPU       *uint32   `json:"util_gpu_pct,omitempty"`
	MemUsedBytes  *uint64   `json:"mem_used_bytes,omitempty"`
	MemTotalBytes *uint64   `json:"mem_total_bytes,omitempty"`
	PowerW        *float64  `json:"power_w,omitempty"`
	TemperatureC  *uint32   `json:"temperature_c,omitempty"`
	Processes     []Process `json:"processes"`
	SampledAtNS   int64     `json:"sampled_at_ns"`
}

// Config configures a Sampler.
type Config struct {
	Interval time.Duration    // DefaultInterval when zero
	Lib      nvml.Interface   // nvml.New() when nil; tests pass go-nvml's mock servers
	Resolve  Resolver         // pid/uuid → process identity
	Emit     func(rows []Row) // called once per sampling round with one row per GPU; may be nil
	Now      func() time.Time // time.Now when nil
	Log      *slog.Logger     // slog.Default when nil
}

// Sampler polls NVML. Create with New, then Run (or Start + Sample for one-shot use).
type Sampler struct {
	cfg  Config
	log  *slog.Logger
	lib  nvml.Interface
	devs []nvml.Device

	mu     sync.Mutex
	on     bool
	seq    int64
	warned map[string]bool // field → warned once that it is unsupported
	latest []Info
}

// New returns a sampler; nothing touches NVML until Start.
func New(cfg Config) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Sampler{cfg: cfg, log: log.With("component", "gpu"), warned: map[string]bool{}}
}

// initName names the NVML init failures without calling nvml.ErrorString, which is not safe to
// reach when the library never loaded.
func initName(r nvml.Return) string {
	switch r {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "NVML library not found (libnvidia-ml.so.1)"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission to use NVML"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "NVML library too old"
	case nvml.ERROR_UNINITIALIZED:
		return "NVML not initialised"
	default:
		return "nvml return code " + strconv.Itoa(int(r))
	}
}

// Start initialises NVML and lists the devices. On a host without a usable NVML it returns an
// error wrapping ErrUnavailable and the sampler stays off.
func (s *Sampler) Start() error {
	lib := s.cfg.Lib
	if lib == nil {
		lib = nvml.New()
	}
	if r := lib.Init(); r != nvml.SUCCESS {
		return fmt.Errorf("%w: %s", ErrUnavailable, initName(r))
	}
	n, r := lib.DeviceGetCount()
	if r != nvml.SUCCESS {
		lib.Shutdown()
		return fmt.Errorf("%w: device count: %v", ErrUnavailable, r)
	}
	var devs []nvml.Device
	for i := 0; i < n; i++ {
		d, r := lib.DeviceGetHandleByIndex(i)
		if r != nvml.SUCCESS {
			s.log.Warn("gpu skipped", "index", i, "err", r.Error())
			continue
		}
		devs = append(devs, d)
	}
	s.mu.Lock()
	s.lib, s.devs, s.on = lib, devs, true
	s.mu.Unlock()
	s.log.Info("gpu sampling on", "gpus", len(devs), "interval", s.cfg.Interval)
	return nil
}

// On reports whether sampling is running.
func (s *Sampler) On() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.on
}

// Close shuts NVML down.
func (s *Sampler) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.on {
		s.lib.Shutdown()
		s.on = false
	}
}

// Run starts the sampler and samples every Interval until ctx ends. A host without NVML is not an
// error: one log line, and Run waits for ctx so the caller's goroutine layout stays the same.
func (s *Sampler) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		s.log.Info("gpu sampling off", "reason", err.Error())
		<-ctx.Done()
		return nil
	}
	defer s.Close()
	tick := time.NewTicker(s.cfg.Interval)
	defer tick.Stop()
	for {
		rows := s.Sample()
		if s.cfg.Emit != nil && len(rows) > 0 {
			s.cfg.Emit(rows)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// GPUs returns the latest view of every GPU (empty while sampling is off).
func (s *Sampler) GPUs() []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Info(nil), s.latest...)
}

// field reports whether an NVML call's result is usable; an unsupported field is warned about once
// and then skipped silently, any other failure is logged at debug level.
func (s *Sampler) field(name string, r nvml.Return) bool {
	if r == nvml.SUCCESS {
		return true
	}
	if r == nvml.ERROR_NOT_SUPPORTED || r == nvml.ERROR_FUNCTION_NOT_FOUND {
		if !s.warned[name] {
			s.warned[name] = true
			s.log.Warn("gpu field not supported, skipped", "field", name)
		}
		return false
	}
	s.log.Debug("gpu field failed", "field", name, "err", r.Error())
	return false
}

// Sample reads every GPU once and returns one row per GPU.
func (s *Sampler) Sample() []Row {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.on {
		return nil
	}
	ts := s.cfg.Now().UnixNano()
	rows := make([]Row, 0, len(s.devs))
	infos := make([]Info, 0, len(s.devs))
	for i, d := range s.devs {
		info := Info{Index: i, SampledAtNS: ts, Processes: []Process{}}
		cols := map[string]any{"gpu_index": i}
		if idx, r := d.GetIndex(); r == nvml.SUCCESS {
			info.Index, cols["gpu_index"] = idx, idx
		}
		if u, r := d.GetUUID(); s.field("gpu_uuid", r) {
			info.UUID, cols["gpu_uuid"] = u, u
		}
		if n, r := d.GetName(); s.field("gpu_name", r) {
			info.Name, cols["gpu_name"] = n, n
		}
		if u, r := d.GetUtilizationRates(); s.field("util_gpu", r) {
			g := u.Gpu
			info.UtilGPU = &g
			cols["util_gpu"] = float64(u.Gpu)
			cols["util_mem"] = float64(u.Memory)
		}
		if m, r := d.GetMemoryInfo(); s.field("mem_used", r) {
			used, total := m.Used, m.Total
			info.MemUsedBytes, info.MemTotalBytes = &used, &total
			cols["mem_used_bytes"] = int64(m.Used)
			cols["mem_total_bytes"] = int64(m.Total)
		}
		if p, r := d.GetPowerUsage(); s.field("power", r) {
			w := float64(p) / 1000 // NVML reports milliwatts
			info.PowerW = &w
			cols["power_w"] = w
		}
		if c, r := d.GetClockInfo(nvml.CLOCK_SM); s.field("sm_clock", r) {
			cols["sm_clock_mhz"] = int64(c)
		}
		if t, r := d.GetTemperature(nvml.TEMPERATURE_GPU); s.field("temperature", r) {
			tc := t
			info.TemperatureC = &tc
			cols["temperature_c"] = int64(t)
		}
		if t, r := d.GetCurrentClocksEventReasons(); s.field("throttle_reasons", r) {
			cols["throttle_reasons"] = int64(t)
			cols["throttle"] = ThrottleNames(t)
		}
		owner := NoProc
		found := false
		if ps, r := d.GetComputeRunningProcesses(); s.field("processes", r) {
			sort.Slice(ps, func(a, b int) bool { return ps[a].Pid < ps[b].Pid })
			var parts []string
			for _, p := range ps {
				pr := Process{Pid: int(p.Pid), UsedBytes: p.UsedGpuMemory, Rank: -1}
				if s.cfg.Resolve.ByPID != nil {
					if id, ok := s.cfg.Resolve.ByPID(int(p.Pid)); ok {
						pr.Role, pr.Rank = id.Role, id.Rank
						// A GPU is attributed to the first vLLM process found on it, by pid order.
						if !found {
							owner, found = id, true
						}
					}
				}
				info.Processes = append(info.Processes, pr)
				parts = append(parts, fmt.Sprintf("%d:%d", p.Pid, p.UsedGpuMemory))
			}
			cols["processes"] = strings.Join(parts, ";")
		}
		if !found && info.UUID != "" && s.cfg.Resolve.ByUUID != nil {
			if id, ok := s.cfg.Resolve.ByUUID(info.UUID); ok {
				owner, found = id, true
			}
		}
		cols["rank"] = int64(owner.Rank)
		s.seq++
		rows = append(rows, Row{Proc: owner, Seq: s.seq, TsNS: ts, Cols: cols})
		infos = append(infos, info)
	}
	s.latest = infos
	return rows
}

// throttleBits names NVML's clock event reasons, in bit order.
var throttleBits = []struct {
	bit  uint64
	name string
}{
	{0x1, "gpu_idle"}, {0x2, "app_clocks"}, {0x4, "sw_power_cap"}, {0x8, "hw_slowdown"},
	{0x10, "sync_boost"}, {0x20, "sw_thermal"}, {0x40, "hw_thermal"}, {0x80, "hw_power_brake"},
	{0x100, "display_clocks"},
}

// ThrottleNames spells a clock-event-reason bit mask as "a|b" ("" when none is set); unknown bits
// appear as hex.
func ThrottleNames(mask uint64) string {
	var names []string
	for _, b := range throttleBits {
		if mask&b.bit != 0 {
			names = append(names, b.name)
			mask &^= b.bit
		}
	}
	if mask != 0 {
		names = append(names, fmt.Sprintf("0x%x", mask))
	}
	return strings.Join(names, "|")
}
