package hub

import (
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
)

// wireSchema is the contract of proto/: table headers and the protobuf decoder.
type wireSchema struct{}

func newWireSchema() (*wireSchema, error) {
	return nil, errors.New("hub: wire contract not available")
}

func (*wireSchema) Header(string) ([]string, bool)           { return nil, false }
func (*wireSchema) Tables() []string                          { return nil }
func (*wireSchema) Version() string                           { return "" }
func (*wireSchema) Decode(string, []byte) (any, error)        { return nil, errors.New("no decoder") }

func streamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:     "PROFILEMATE",
		Subjects: []string{"pm.v1.ev.>", "pm.v1.life.>", "pm.v1.hb.>"},
	}
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("hub: listen address %q: %w", hp, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("hub: listen port %q: %w", p, err)
	}
	return h, port, nil
}
