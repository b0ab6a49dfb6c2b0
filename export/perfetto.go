package export

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of Perfetto's trace format (protos/perfetto/trace/trace.proto, trace_packet.proto,
// track_event/track_event.proto, track_descriptor.proto, process_descriptor.proto,
// counter_descriptor.proto, debug_annotation.proto in the Perfetto repository). The writer encodes
// with protowire; the tests decode with code protoc generated from perfettopb/trace.proto, which
// declares the same numbers.
const (
	fTracePacket = 1 // Trace.packet

	fPacketTimestamp  = 8  // TracePacket.timestamp (uint64, ns)
	fPacketSequenceID = 10 // TracePacket.trusted_packet_sequence_id
	fPacketTrackEvent = 11 // TracePacket.track_event
	fPacketTrackDesc  = 60 // TracePacket.track_descriptor

	fDescUUID    = 1 // TrackDescriptor.uuid
	fDescName    = 2 // TrackDescriptor.name
	fDescProcess = 3 // TrackDescriptor.process
	fDescParent  = 5 // TrackDescriptor.parent_uuid
	fDescCounter = 8 // TrackDescriptor.counter

	fProcPID  = 1 // ProcessDescriptor.pid
	fProcName = 6 // ProcessDescriptor.process_name

	fCounterCategories = 2 // CounterDescriptor.categories

	fEventDebug         = 4  // TrackEvent.debug_annotations
	fEventType          = 9  // TrackEvent.type
	fEventTrackUUID     = 11 // TrackEvent.track_uuid
	fEventCategories    = 22 // TrackEvent.categories
	fEventName          = 23 // TrackEvent.name
	fEventDoubleCounter = 44 // TrackEvent.double_counter_value

	fDebugName   = 10 // DebugAnnotation.name
	fDebugInt    = 4  // DebugAnnotation.int_value
	fDebugDouble = 5  // DebugAnnotation.double_value
	fDebugString = 6  // DebugAnnotation.string_value

	typeSliceBegin = 1 // TrackEvent.Type
	typeSliceEnd   = 2
	typeInstant    = 3
	typeCounter    = 4

	sequenceID = 1
)

// emission is one packet of the trace: a slice's begin or end, an instant or a counter value.
type emission struct {
	ts  int64
	typ int
	e   *Event
}

// Emissions returns the timeline's track events in the order they are written: each slice as a
// begin at StartNS and an end at EndNS (an enclosed slice ends before its parent), sorted by time,
// each track's own order kept.
func (tl *Timeline) emissions() []emission {
	byTrack := map[*Track][]*Event{}
	var order []*Track
	for i := range tl.Events {
		e := &tl.Events[i]
		if byTrack[e.Track] == nil {
			order = append(order, e.Track)
		}
		byTrack[e.Track] = append(byTrack[e.Track], e)
	}
	var out []emission
	for _, t := range order {
		var stack []*Event
		for _, e := range byTrack[t] { // already sorted by start, enclosing first
			for len(stack) > 0 && stack[len(stack)-1].EndNS <= e.StartNS {
				top := stack[len(stack)-1]
				out = append(out, emission{top.EndNS, typeSliceEnd, top})
				stack = stack[:len(stack)-1]
			}
			switch e.Kind {
			case Slice:
				out = append(out, emission{e.StartNS, typeSliceBegin, e})
				stack = append(stack, e)
			case Instant:
				out = append(out, emission{e.StartNS, typeInstant, e})
			case Counter:
				out = append(out, emission{e.StartNS, typeCounter, e})
			}
		}
		for i := len(stack) - 1; i >= 0; i-- {
			out = append(out, emission{stack[i].EndNS, typeSliceEnd, stack[i]})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ts < out[j].ts })
	return out
}

// WritePerfetto writes the timeline as a Perfetto protobuf trace (a Trace message: one
// TracePacket per track descriptor and per track event, all on one packet sequence, timestamps in
// ns on the session's aligned clock). Process tracks carry the pseudo pid and "host/proc (role, pid
// N)"; slice, instant and counter tracks are their children. Errors: the writer's.
func (tl *Timeline) WritePerfetto(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	var pkt, sub, sub2 []byte
	put := func() {
		var b []byte
		b = protowire.AppendTag(b, fTracePacket, protowire.BytesType)
		b = protowire.AppendBytes(b, pkt)
		bw.Write(b)
	}
	for _, p := range tl.Processes {
		sub2 = sub2[:0]
		sub2 = protowire.AppendTag(sub2, fProcPID, protowire.VarintType)
		sub2 = protowire.AppendVarint(sub2, uint64(p.PseudoPID))
		sub2 = protowire.AppendTag(sub2, fProcName, protowire.BytesType)
		sub2 = protowire.AppendString(sub2, fmt.Sprintf("%s (%s, pid %d)", p.Key, p.Role, p.PID))
		sub = sub[:0]
		sub = protowire.AppendTag(sub, fDescUUID, protowire.VarintType)
		sub = protowire.AppendVarint(sub, p.UUID)
		sub = protowire.AppendTag(sub, fDescName, protowire.BytesType)
		sub = protowire.AppendString(sub, p.Key)
		sub = protowire.AppendTag(sub, fDescProcess, protowire.BytesType)
		sub = protowire.AppendBytes(sub, sub2)
		pkt = pkt[:0]
		pkt = protowire.AppendTag(pkt, fPacketSequenceID, protowire.VarintType)
		pkt = protowire.AppendVarint(pkt, sequenceID)
		pkt = protowire.AppendTag(pkt, fPacketTrackDesc, protowire.BytesType)
		pkt = protowire.AppendBytes(pkt, sub)
		put()
	}
	for _, t := range tl.Tracks {
		sub = sub[:0]
		sub = protowire.AppendTag(sub, fDescUUID, protowire.VarintType)
		sub = protowire.AppendVarint(sub, t.UUID)
		sub = protowire.AppendTag(sub, fDescParent, protowire.VarintType)
		sub = protowire.AppendVarint(sub, t.Process.UUID)
		name := t.Name
		if t.Counter && t.Unit != "" {
			name += " (" + t.Unit + ")"
		}
		sub = protowire.AppendTag(sub, fDescName, protowire.BytesType)
		sub = protowire.AppendString(sub, name)
		if t.Counter {
			sub2 = sub2[:0]
			sub2 = protowire.AppendTag(sub2, fCounterCategories, protowire.BytesType)
			sub2 = protowire.AppendString(sub2, "profilemate")
			sub = protowire.AppendTag(sub, fDescCounter, protowire.BytesType)
			sub = protowire.AppendBytes(sub, sub2)
		}
		pkt = pkt[:0]
		pkt = protowire.AppendTag(pkt, fPacketSequenceID, protowire.VarintType)
		pkt = protowire.AppendVarint(pkt, sequenceID)
		pkt = protowire.AppendTag(pkt, fPacketTrackDesc, protowire.BytesType)
		pkt = protowire.AppendBytes(pkt, sub)
		put()
	}
	for _, em := range tl.emissions() {
		e := em.e
		sub = sub[:0]
		sub = protowire.AppendTag(sub, fEventType, protowire.VarintType)
		sub = protowire.AppendVarint(sub, uint64(em.typ))
		sub = protowire.AppendTag(sub, fEventTrackUUID, protowire.VarintType)
		sub = protowire.AppendVarint(sub, e.Track.UUID)
		switch em.typ {
		case typeCounter:
			sub = protowire.AppendTag(sub, fEventDoubleCounter, protowire.Fixed64Type)
			sub = protowire.AppendFixed64(sub, math.Float64bits(e.Value))
		case typeSliceBegin, typeInstant:
			sub = protowire.AppendTag(sub, fEventCategories, protowire.BytesType)
			sub = protowire.AppendString(sub, e.Table)
			sub = protowire.AppendTag(sub, fEventName, protowire.BytesType)
			sub = protowire.AppendString(sub, e.Name)
			for _, kv := range e.ArgList() {
				sub = protowire.AppendTag(sub, fEventDebug, protowire.BytesType)
				sub = protowire.AppendBytes(sub, debugAnnotation(kv[0], kv[1]))
			}
		}
		pkt = pkt[:0]
		pkt = protowire.AppendTag(pkt, fPacketTimestamp, protowire.VarintType)
		pkt = protowire.AppendVarint(pkt, uint64(em.ts))
		pkt = protowire.AppendTag(pkt, fPacketSequenceID, protowire.VarintType)
		pkt = protowire.AppendVarint(pkt, sequenceID)
		pkt = protowire.AppendTag(pkt, fPacketTrackEvent, protowire.BytesType)
		pkt = protowire.AppendBytes(pkt, sub)
		put()
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write perfetto trace: %w", err)
	}
	return nil
}

// debugAnnotation encodes one argument: a value that reads as an integer or a number is written
// as one, anything else as a string.
func debugAnnotation(name, v string) []byte {
	var b []byte
	b = protowire.AppendTag(b, fDebugName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	if i, err := strconv.ParseInt(v, 10, 64); err == nil {
		b = protowire.AppendTag(b, fDebugInt, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(i))
	}
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		b = protowire.AppendTag(b, fDebugDouble, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(f))
	}
	b = protowire.AppendTag(b, fDebugString, protowire.BytesType)
	return protowire.AppendString(b, v)
}
