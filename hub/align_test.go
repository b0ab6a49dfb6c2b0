package hub

import (
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestAlignTS(t *testing.T) {
	cases := []struct {
		ts, off, want int64
		exact         bool
	}{
		{1000, 500, 1500, true},
		{1000, -500, 500, true},
		{math.MaxInt64 - 10, 11, math.MaxInt64, false},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, false},
		{1_700_000_000_000_000_000, math.MinInt64, 0, false},
		{1_700_000_000_000_000_000, -1_800_000_000_000_000_000, 0, false},
		{5, math.MinInt64 + 1, 0, false},
		{0, 0, 0, true},
	}
	for _, c := range cases {
		got, exact := alignTS(c.ts, c.off)
		if got != c.want || exact != c.exact {
			t.Errorf("alignTS(%d, %d) = %d, %v; want %d, %v", c.ts, c.off, got, exact, c.want, c.exact)
		}
	}
}

// TestHugeClockOffsetClamped: a heartbeat with a huge offset and events near the int64 limit give
// aligned times clamped to [0, 2^63-1], counted in metadata and counters (they wrapped negative).
func TestHugeClockOffsetClamped(t *testing.T) {
	data := t.TempDir()
	s := startHub(t, data)
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, host := range []string{"fwd", "back"} {
		b := kvBatch(host, 1, 1)
		publish(t, nc, "pm.v1.ev.S1."+host+".w0.kv_cache", jsonMsg{Batch: b})
	}
	publish(t, nc, "pm.v1.hb.fwd", jsonMsg{HB: &Heartbeat{Host: "fwd", OffsetNS: math.MaxInt64 / 2, Measured: true}})
	publish(t, nc, "pm.v1.hb.back", jsonMsg{HB: &Heartbeat{Host: "back", OffsetNS: math.MinInt64 + 1, Measured: true}})
	fwd := kvBatch("fwd", 1, 2)
	fwd.Events[0].TsNS = math.MaxInt64 - 1000
	publish(t, nc, "pm.v1.ev.S1.fwd.w0.kv_cache", jsonMsg{Batch: fwd})
	publish(t, nc, "pm.v1.ev.S1.back.w0.kv_cache", jsonMsg{Batch: kvBatch("back", 1, 2)})
	waitFor(t, "four rows", func() bool { return s.Counters().Rows >= 4 })
	waitFor(t, "clamped rows counted", func() bool { return s.Counters().AlignedClamped == 2 })
	recs := readCSV(t, filepath.Join(SessionDir(data, "S1"), "kv_cache_usage.csv"))
	for _, r := range recs[1:] {
		aligned, err := strconv.ParseInt(r[len(r)-1], 10, 64)
		if err != nil || aligned < 0 {
			t.Errorf("row %v: aligned %q negative or not a number", r, r[len(r)-1])
		}
		if r[1] == "fwd" && r[8] == "2" && aligned != math.MaxInt64 {
			t.Errorf("fwd seq 2: aligned %d, want MaxInt64", aligned)
		}
		if r[1] == "back" && r[8] == "2" && aligned != 0 {
			t.Errorf("back seq 2: aligned %d, want 0", aligned)
		}
	}
	s.mu.Lock()
	clamped := s.sessions["S1"].meta.AlignedClamped
	s.mu.Unlock()
	if clamped != 2 {
		t.Errorf("metadata aligned_clamped %d, want 2", clamped)
	}
}
