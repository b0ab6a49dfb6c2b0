package export

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
)

// chromeEvent is one entry of the Chrome trace-event format's traceEvents array (ts and dur in µs).
type chromeEvent struct {
	Name string         `json:"name"`
	Cat  string         `json:"cat,omitempty"`
	Ph   string         `json:"ph"`
	TS   float64        `json:"ts"`
	Dur  *float64       `json:"dur,omitempty"`
	PID  int32          `json:"pid"`
	TID  int            `json:"tid"`
	S    string         `json:"s,omitempty"`
	Args map[string]any `json:"args,omitempty"`
}

// WriteChromeJSON writes the timeline in the Chrome trace-event JSON format ({"traceEvents": […]}):
// process_name/thread_name metadata, complete events ("X") for slices, thread-scoped instants ("i")
// and counters ("C", one series per track name). pid is the process's pseudo pid, tid the track's
// lane; times are µs on the aligned clock. Errors: the writer's.
func (tl *Timeline) WriteChromeJSON(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	first := true
	emit := func(e chromeEvent) error {
		if !first {
			bw.WriteByte(',')
		}
		first = false
		return enc.Encode(e)
	}
	bw.WriteString(`{"displayTimeUnit":"ms","otherData":{"session":`)
	b, _ := json.Marshal(tl.Session)
	bw.Write(b)
	bw.WriteString(`,"clock":"ts_aligned_ns"},"traceEvents":[`)
	for _, p := range tl.Processes {
		if err := emit(chromeEvent{Name: "process_name", Ph: "M", PID: p.PseudoPID, Args: map[string]any{"name": fmt.Sprintf("%s (%s, pid %d)", p.Key, p.Role, p.PID)}}); err != nil {
			return err
		}
	}
	for _, t := range tl.Tracks {
		if t.Counter {
			continue
		}
		if err := emit(chromeEvent{Name: "thread_name", Ph: "M", PID: t.Process.PseudoPID, TID: t.Lane, Args: map[string]any{"name": t.Name}}); err != nil {
			return err
		}
	}
	for i := range tl.Events {
		e := &tl.Events[i]
		var args map[string]any
		if kvs := e.ArgList(); len(kvs) > 0 {
			args = make(map[string]any, len(kvs))
			for _, kv := range kvs {
				// JSON has no NaN or infinity: those stay text.
				if f, err := strconv.ParseFloat(kv[1], 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
					args[kv[0]] = f
				} else {
					args[kv[0]] = kv[1]
				}
			}
		}
		ce := chromeEvent{Name: e.Name, Cat: e.Table, TS: float64(e.StartNS) / 1e3, PID: e.Track.Process.PseudoPID, TID: e.Track.Lane, Args: args}
		switch e.Kind {
		case Slice:
			d := float64(e.EndNS-e.StartNS) / 1e3
			ce.Ph, ce.Dur = "X", &d
		case Instant:
			ce.Ph, ce.S = "i", "t"
		case Counter:
			ce.Ph, ce.Name, ce.TID = "C", e.Track.Name, 0
			ce.Args = map[string]any{"value": e.Value}
			if math.IsNaN(e.Value) || math.IsInf(e.Value, 0) {
				ce.Args["value"] = strconv.FormatFloat(e.Value, 'g', -1, 64)
			}
		}
		if err := emit(ce); err != nil {
			return fmt.Errorf("write chrome trace: %w", err)
		}
	}
	bw.WriteString("]}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write chrome trace: %w", err)
	}
	return nil
}
