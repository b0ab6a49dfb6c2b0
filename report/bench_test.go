package report_test

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/profilemate/profilemate/report"
	"github.com/profilemate/profilemate/report/reporttest"
)

// largeSpec is a 4-host × 8-worker MoE deployment (32 layers × 64 experts) with about rows rows.
func largeSpec(rows int64) reporttest.Spec {
	s := reporttest.Spec{Session: "20260101_000000_b1b2b3", Hosts: 4, WorkersPerHost: 8, Steps: 1, Layers: 32, Experts: 64,
		MoEEvery: 200, GPUEvery: 5, PreemptEvery: 50, Budget: true}
	// Rows grow linearly with steps (MoE and GPU rows in whole intervals): scale from 1000 steps.
	s.Steps = 1000
	var k int64
	for _, n := range s.Rows() {
		k += n
	}
	s.Steps = int(rows * 1000 / k)
	return s
}

// peakRSS is the process's peak resident set (VmHWM) in bytes; resetPeak restarts it (Linux).
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}

// cpuSeconds is the process's user+system CPU time so far: on a shared machine, rows per CPU
// second says more than rows per wall second.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func resetPeak() {
	runtime.GC()
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// BenchmarkReportLarge renders a large synthetic session (PROFILEMATE_BENCH_ROWS rows, default
// 1,000,000; docs/BENCHMARKS.md has 10,000,000) with and without the in-tree analyses, and reports
// rows/s and the peak RSS of the rendering alone.
func BenchmarkReportLarge(b *testing.B) {
	rows := int64(1_000_000)
	if v, err := strconv.ParseInt(os.Getenv("PROFILEMATE_BENCH_ROWS"), 10, 64); err == nil && v > 0 {
		rows = v
	}
	dir := filepath.Join(b.TempDir(), "large")
	spec := largeSpec(rows)
	if err := reporttest.Write(dir, spec); err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, n := range spec.Rows() {
		total += n
	}
	for _, bc := range []struct {
		name string
		skip bool
	}{{"plots", true}, {"plots+analyses", false}} {
		b.Run(bc.name, func(b *testing.B) {
			resetPeak()
			cpu0 := cpuSeconds()
			for i := 0; i < b.N; i++ {
				r, err := report.Build(dir, report.Options{SkipAnalysis: bc.skip})
				if err != nil {
					b.Fatal(err)
				}
				if err := r.WriteHTML(io.Discard); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(total)*float64(b.N)/(cpuSeconds()-cpu0), "rows/cpu-s")
			b.ReportMetric(float64(total), "rows")
			b.ReportMetric(float64(peakRSS())/(1<<20), "peak-RSS-MiB")
		})
	}
}
