package sdk

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers of profilemate.v1.EventBatch, Process, Event and Value (proto/profilemate/v1).
const (
	fBatchMajor   = 1
	fBatchProcess = 3
	fBatchEvents  = 4
	fBatchDropped = 5

	fProcHost = 2
	fProcPID  = 3
	fProcRole = 5
	fProcDP   = 6
	fProcPP   = 7
	fProcTP   = 8
	fProcEP   = 9
	fProcRank = 10

	fEvKind  = 1
	fEvTable = 2
	fEvSeq   = 3
	fEvStep  = 4
	fEvTS    = 5
	fEvCols  = 6

	fValI = 1
	fValD = 2
	fValS = 3
	fValB = 4
)

var errWire = errors.New("malformed EventBatch")

// decoder reads EventBatch bytes straight into a Batch, without the generated message's
// map<string, Value> (which dominated the cost of a plugin call). Column names, kinds and tables
// repeat in every event; names keeps one string of each.
type decoder struct {
	names map[string]string
	bad   bool // a string was not UTF-8: the generated decoder refuses it, so must we
}

func (d *decoder) name(b []byte) string {
	if s, ok := d.names[string(b)]; ok {
		return s
	}
	if !utf8.Valid(b) {
		d.bad = true
	}
	if d.names == nil {
		d.names = map[string]string{}
	}
	s := string(b)
	if len(d.names) < 4096 {
		d.names[s] = s
	}
	return s
}

// decode fills b from data; major is the batch's schema major. Unknown fields are skipped, as
// protobuf readers do.
func (d *decoder) decode(data []byte, b *Batch) (major uint64, err error) {
	b.Process = Process{DP: -1, PP: -1, TP: -1, EP: -1, Rank: -1}
	procSeen := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return 0, errWire
		}
		data = data[n:]
		switch {
		case num == fBatchMajor && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return 0, errWire
			}
			major, data = v, data[n:]
		case num == fBatchDropped && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return 0, errWire
			}
			b.Dropped, data = v, data[n:]
		case num == fBatchProcess && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return 0, errWire
			}
			if !procSeen {
				// proto3 ints default to 0 when the field is absent, as the generated decoder reads them.
				b.Process = Process{}
				procSeen = true
			}
			if err := d.process(v, &b.Process); err != nil {
				return 0, err
			}
			data = data[n:]
		case num == fBatchEvents && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return 0, errWire
			}
			var ev Event
			kind, err := d.event(v, &ev)
			if err != nil {
				return 0, err
			}
			if b.Kind == "" {
				b.Kind = kind
			}
			b.Events = append(b.Events, ev)
			data = data[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return 0, errWire
			}
			data = data[n:]
		}
	}
	if !procSeen {
		b.Process = Process{}
	}
	return major, nil
}

func (d *decoder) process(data []byte, p *Process) error {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errWire
		}
		data = data[n:]
		if typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return errWire
			}
			data = data[n:]
			switch num {
			case fProcPID:
				p.PID = int64(v)
			case fProcDP:
				p.DP = int32(v)
			case fProcPP:
				p.PP = int32(v)
			case fProcTP:
				p.TP = int32(v)
			case fProcEP:
				p.EP = int32(v)
			case fProcRank:
				p.Rank = int32(v)
			}
			continue
		}
		if typ == protowire.BytesType && (num == fProcHost || num == fProcRole) {
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return errWire
			}
			if num == fProcHost {
				p.Host = d.name(v)
			} else {
				p.Role = d.name(v)
			}
			data = data[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, data)
		if n < 0 {
			return errWire
		}
		data = data[n:]
	}
	return nil
}

func (d *decoder) event(data []byte, ev *Event) (kind string, err error) {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return "", errWire
		}
		data = data[n:]
		switch {
		case typ == protowire.VarintType && (num == fEvSeq || num == fEvStep || num == fEvTS):
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return "", errWire
			}
			data = data[n:]
			switch num {
			case fEvSeq:
				ev.Seq = v
			case fEvStep:
				ev.Step = int64(v)
			case fEvTS:
				ev.TSNS = int64(v)
			}
		case typ == protowire.BytesType && (num == fEvKind || num == fEvTable || num == fEvCols):
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return "", errWire
			}
			data = data[n:]
			switch num {
			case fEvKind:
				kind = d.name(v)
			case fEvTable:
				ev.Table = d.name(v)
			case fEvCols:
				if ev.Cols == nil {
					ev.Cols = make(map[string]any, 8)
				}
				if err := d.col(v, ev.Cols); err != nil {
					return "", err
				}
			}
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return "", errWire
			}
			data = data[n:]
		}
	}
	if ev.Cols == nil {
		ev.Cols = map[string]any{}
	}
	return kind, nil
}

// col reads one map entry (key = 1, value = 2) into cols; an entry without a value case is an
// absent cell, as in the generated decoder.
func (d *decoder) col(data []byte, cols map[string]any) error {
	var key string
	var val any
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return errWire
		}
		data = data[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return errWire
			}
			key, data = d.name(v), data[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return errWire
			}
			var err error
			if val, err = d.value(v); err != nil {
				return err
			}
			data = data[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return errWire
			}
			data = data[n:]
		}
	}
	if val != nil {
		cols[key] = val
	} else {
		delete(cols, key)
	}
	return nil
}

func (d *decoder) value(data []byte) (any, error) {
	var val any
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, errWire
		}
		data = data[n:]
		switch {
		case num == fValI && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return nil, errWire
			}
			val, data = int64(v), data[n:]
		case num == fValB && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return nil, errWire
			}
			val, data = v != 0, data[n:]
		case num == fValD && typ == protowire.Fixed64Type:
			v, n := protowire.ConsumeFixed64(data)
			if n < 0 {
				return nil, errWire
			}
			val, data = math.Float64frombits(v), data[n:]
		case num == fValS && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return nil, errWire
			}
			if !utf8.Valid(v) {
				return nil, errWire
			}
			val, data = string(v), data[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return nil, errWire
			}
			data = data[n:]
		}
	}
	return val, nil
}

// decodeBatch is the fast path with the generated decoder behind it: anything the fast reader
// refuses is read again by proto.Unmarshal, whose error (if any) is the one reported.
func (d *decoder) decodeBatch(session string, seq uint64, data []byte) (Batch, error) {
	b := Batch{Session: session, StreamSeq: seq}
	d.bad = false
	major, err := d.decode(data, &b)
	if err != nil || d.bad {
		return decodeGeneric(session, seq, data)
	}
	if major != wireMajor {
		return Batch{}, fmt.Errorf("stream message %d: schema major %d, this SDK reads %d", seq, major, wireMajor)
	}
	return b, nil
}
