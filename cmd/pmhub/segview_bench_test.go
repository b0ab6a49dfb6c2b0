package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/export"
	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/report"
)

// largeRotatedSession writes a rotated session of segs segments with rows forward_pass_timing rows
// each (8 workers, one row per worker and step) under data/sessions/, in the hub's layout.
func largeRotatedSession(b *testing.B, data string, segs, rows int) {
	b.Helper()
	hdr := append(proto.Default().Header("forward_pass_timing"), "ts_aligned_ns")
	root := filepath.Join(data, "sessions")
	seq := map[int]int{}
	for g := 0; g < segs; g++ {
		dir := filepath.Join(root, fmt.Sprintf("BIG@%06d", g))
		if g == segs-1 {
			dir = filepath.Join(root, "BIG")
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		var sb strings.Builder
		sb.WriteString(strings.Join(hdr, ",") + "\n")
		for i := 0; i < rows; i++ {
			w := i % 8
			seq[w]++
			ts := int64(1_790_000_000_000_000_000) + int64(g*rows+i)*1_000_000
			cells := map[string]string{"session": "BIG", "host": "h1", "pid": strconv.Itoa(100 + w), "role": "worker",
				"dp": "0", "pp": "0", "tp": strconv.Itoa(w), "ep": "-1", "seq": strconv.Itoa(seq[w]), "step": strconv.Itoa(seq[w]),
				"ts_ns": strconv.FormatInt(ts, 10), "ts_aligned_ns": strconv.FormatInt(ts, 10), "cpu_ms": "12.5", "tokens": "256",
				"runtime_mode": "FULL", "gpu_status": "unavailable"}
			for j, c := range hdr {
				if j > 0 {
					sb.WriteByte(',')
				}
				sb.WriteString(cells[c])
			}
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(filepath.Join(dir, "forward_pass_timing.csv"), []byte(sb.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		m := hub.Metadata{Session: "BIG", Status: hub.StatusActive, Rows: map[string]int64{"forward_pass_timing": int64(rows)},
			Bytes: int64(sb.Len()), StartNS: 1_790_000_000_000_000_000, Segment: &hub.SegmentMeta{Index: g}}
		for w := 0; w < 8; w++ {
			m.Processes = append(m.Processes, &hub.ProcMeta{Host: "h1", PID: int64(100 + w), Proc: fmt.Sprintf("w%d", w),
				Ident: hub.Ident{Role: "worker", Rank: int64(w), TP: int64(w), EP: -1}, Rows: map[string]int64{"forward_pass_timing": int64(rows / 8)}})
		}
		if g < segs-1 {
			m.Status, m.EndReason = hub.StatusEnded, hub.EndRotated
		}
		mb, _ := json.Marshal(&m)
		if err := os.WriteFile(filepath.Join(dir, hub.MetadataFile), mb, 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRotatedSessionView: pmhub report and export of a large rotated session (24 segments,
// 2.4 M forward_pass_timing rows, about 220 MB of CSV) without a time range, reading the segments
// in place (linked) against copying every row to $TMPDIR first (copied, as before). Each
// iteration opens the view and builds the report, then the Perfetto timeline.
func BenchmarkRotatedSessionView(b *testing.B) {
	data := b.TempDir()
	largeRotatedSession(b, data, 24, 100_000)
	for _, linked := range []bool{false, true} {
		name := map[bool]string{false: "copied", true: "linked"}[linked]
		b.Run(name+"/report", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				v, err := openViewLinked(data, "BIG", hub.Window{}, linked)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := report.Build(v.Dir, report.Options{SkipAnalysis: true}); err != nil {
					b.Fatal(err)
				}
				v.Close()
			}
		})
		b.Run(name+"/export", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				v, err := openViewLinked(data, "BIG", hub.Window{}, linked)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := export.Build(v.Dir); err != nil {
					b.Fatal(err)
				}
				v.Close()
			}
		})
		b.Run(name+"/open", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				v, err := openViewLinked(data, "BIG", hub.Window{}, linked)
				if err != nil {
					b.Fatal(err)
				}
				v.Close()
			}
		})
	}
}
