package agent

import (
	"github.com/nats-io/nats.go/jetstream"

	"github.com/profilemate/profilemate/internal/stream"
	pmproto "github.com/profilemate/profilemate/proto"
)

// Subjects, ids and the stream come from proto/ (docs/ARCHITECTURE.md "NATS").

func eventSubject(session, host, proc, kind string) string {
	return pmproto.EventSubject(session, host, proc, kind)
}

func lifeSubject(session, host, proc string) string { return pmproto.LifeSubject(session, host, proc) }

func eventMsgID(session, host string, pid int, kind string, first, last uint64) string {
	return pmproto.MsgID(session, host, int64(pid), kind, first, last)
}

func procToken(id Ident, pid int) string { return pmproto.ProcToken(id.Role, id.DP, id.Rank, pid) }

func streamConfig() jetstream.StreamConfig { return stream.Config() }
