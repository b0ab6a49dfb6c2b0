package export_test

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/export"
	"github.com/profilemate/profilemate/report/reporttest"
)

func peakRSSMiB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return -1
}

// BenchmarkExportLarge exports a synthetic session of about PROFILEMATE_BENCH_ROWS rows
// (default 1,000,000; 4 hosts × 8 workers, no MoE rows, so every row is a timeline event) as a
// Perfetto trace, Chrome JSON and Parquet; it reports rows/s and the peak RSS of each.
func BenchmarkExportLarge(b *testing.B) {
	rows := int64(1_000_000)
	if v, err := strconv.ParseInt(os.Getenv("PROFILEMATE_BENCH_ROWS"), 10, 64); err == nil && v > 0 {
		rows = v
	}
	spec := reporttest.Spec{Session: "20260101_000000_c1c2c3", Hosts: 4, WorkersPerHost: 8, GPUEvery: 5, PreemptEvery: 50, Budget: true, Steps: 1000}
	var per int64
	for _, n := range spec.Rows() {
		per += n
	}
	spec.Steps = int(rows * 1000 / per)
	dir := filepath.Join(b.TempDir(), "large")
	if err := reporttest.Write(dir, spec); err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, n := range spec.Rows() {
		total += n
	}
	out := b.TempDir()
	for _, format := range []string{"perfetto", "chrome-json", "parquet"} {
		b.Run(format, func(b *testing.B) {
			runtime.GC()
			debug.FreeOSMemory()
			_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
			for i := 0; i < b.N; i++ {
				if format == "parquet" {
					if _, err := export.WriteParquet(dir, out); err != nil {
						b.Fatal(err)
					}
					continue
				}
				tl, err := export.Build(dir)
				if err != nil {
					b.Fatal(err)
				}
				if format == "perfetto" {
					err = tl.WritePerfetto(io.Discard)
				} else {
					err = tl.WriteChromeJSON(io.Discard)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(total)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(total), "rows")
			b.ReportMetric(peakRSSMiB(), "peak-RSS-MiB")
		})
	}
}
