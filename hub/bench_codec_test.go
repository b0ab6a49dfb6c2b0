package hub

import (
	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// benchCodec encodes the benchmark's batches as the agent does (protobuf EventBatch with the
// table's columns filled) and decodes them with the hub's real wire decoder.
func benchCodec() (func(*Batch) []byte, Decoder) {
	ws, err := newWireSchema()
	if err != nil {
		panic(err)
	}
	enc := func(b *Batch) []byte {
		p := &pmpb.Process{Session: b.Session, Host: b.Host, Pid: b.PID, Role: b.Ident.Role, Tp: int32(b.Ident.TP), Ep: -1, Rank: int32(b.Ident.Rank)}
		eb := proto.Stamp(&pmpb.EventBatch{Process: p})
		for _, e := range b.Events {
			cols := map[string]*pmpb.Value{}
			for i, c := range ws.own[e.Table] {
				if i == 0 {
					cols[c] = &pmpb.Value{V: &pmpb.Value_D{D: 0.4375}}
				} else {
					cols[c] = &pmpb.Value{V: &pmpb.Value_I{I: int64(1234 + i)}}
				}
			}
			eb.Events = append(eb.Events, &pmpb.Event{Kind: b.Kind, Table: e.Table, Seq: e.Seq, Step: e.Step, TsNs: e.TsNS, Cols: cols})
		}
		out, _ := gproto.Marshal(eb)
		return out
	}
	return enc, ws
}

func benchSchema() Schema {
	ws, err := newWireSchema()
	if err != nil {
		panic(err)
	}
	return ws
}
