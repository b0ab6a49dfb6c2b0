package agent

import (
	"encoding/json"
)

// BatchHead is what an encoded event batch says about its process and kind.
type BatchHead struct {
	Session string
	Host    string
	Proc    string
	PID     int
	Kind    string
	Ident   Ident
	Dropped uint64 // events the process dropped so far (cumulative)
}

// Life is one lifecycle record of a process or a session.
type Life struct {
	Type         string // hello, status, bye, end
	Session      string
	Host         string
	Proc         string
	PID          int
	Ident        Ident
	Hello        *Hello
	Targets      []Target
	Dropped      uint64 // shim drops (cumulative); for end: all drops of the session
	LastSeq      uint64
	EndNS        int64
	Clean        bool   // bye: the shim said bye (false: its connection just ended)
	EndState     string // bye: EndClean, EndLost or EndKilled
	EndSignal    string // bye, EndKilled: the signal's name (SIGKILL)
	Reason       string // end: why the session ended
	AgentVersion string // start
	// AgentDropped counts messages of this session the agent could not keep (queue and spool full).
	AgentDropped int64
}

// Encoder turns the agent's records into stream message bodies.
type Encoder interface {
	EncodeBatch(h *BatchHead, events []Event) ([]byte, error)
	EncodeLife(l *Life) ([]byte, error)
}

// JSONEncoder writes records as JSON; it exists for tests and debugging, the stream carries protobuf.
type JSONEncoder struct{}

var _ Encoder = JSONEncoder{}

// EncodeBatch encodes a batch as {"head":…,"events":[…]}.
func (JSONEncoder) EncodeBatch(h *BatchHead, events []Event) ([]byte, error) {
	return json.Marshal(struct {
		Head   *BatchHead `json:"head"`
		Events []Event    `json:"events"`
	}{h, events})
}

// EncodeLife encodes a lifecycle record as JSON.
func (JSONEncoder) EncodeLife(l *Life) ([]byte, error) { return json.Marshal(l) }
