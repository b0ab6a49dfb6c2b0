package e2e

import (
	"testing"

	gproto "google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto"
	"github.com/profilemate/profilemate/proto/pmpb"
)

// wireProc is a simulated process for tests that publish to the stream themselves.
type wireProc struct {
	Host     string
	PID      int64
	Rank, TP int32
}

func (p wireProc) process(session string) *pmpb.Process {
	return &pmpb.Process{Session: session, Host: p.Host, Pid: p.PID, Role: proto.RoleWorker, Dp: 0, Pp: 0, Tp: p.TP, Ep: -1, Rank: p.Rank, Python: "3.12.1", Vllm: "0.16.0"}
}

func (p wireProc) token() string {
	return proto.ProcToken(proto.RoleWorker, 0, int(p.Rank), int(p.PID))
}

// kvTables are the two tables of kind kv_cache, which encodeKVBatch alternates between.
var kvTables = proto.KindTables(proto.KindKVCache)

func marshal(t testing.TB, m gproto.Message) []byte {
	t.Helper()
	b, err := gproto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// encodeKVBatch is one kv_cache EventBatch of n events from seq first on, as the agent publishes it.
func encodeKVBatch(t testing.TB, session string, p wireProc, first uint64, n int) (subject string, data []byte, msgID string) {
	eb := proto.Stamp(&pmpb.EventBatch{Process: p.process(session)})
	for i := 0; i < n; i++ {
		s := first + uint64(i)
		tbl := kvTables[int(s)%len(kvTables)]
		eb.Events = append(eb.Events, &pmpb.Event{Kind: proto.KindKVCache, Table: tbl, Seq: s, Step: int64(s), TsNs: 1_790_000_000_000_000_000 + int64(s)*1000,
			Cols: map[string]*pmpb.Value{}})
	}
	last := first + uint64(n) - 1
	eb.BatchId = proto.MsgID(session, p.Host, p.PID, "", proto.KindKVCache, first, last)
	return proto.EventSubject(session, p.Host, p.token(), proto.KindKVCache), marshal(t, eb), eb.BatchId
}

func encodeHello(t *testing.T, session string, p wireProc) (string, []byte) {
	lc := proto.Stamp(&pmpb.Lifecycle{Process: p.process(session), Record: &pmpb.Lifecycle_Hello_{Hello: &pmpb.Lifecycle_Hello{}}})
	return proto.LifeSubject(session, p.Host, p.token()), marshal(t, lc)
}

func encodeBye(t *testing.T, session string, p wireProc, lastSeq uint64) (string, []byte) {
	lc := proto.Stamp(&pmpb.Lifecycle{Process: p.process(session), Record: &pmpb.Lifecycle_Bye_{Bye: &pmpb.Lifecycle_Bye{LastSeq: lastSeq, Clean: true}}})
	return proto.LifeSubject(session, p.Host, p.token()), marshal(t, lc)
}
