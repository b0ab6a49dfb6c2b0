package proto

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/profilemate/profilemate/proto/pmpb"
)

// VersionError is returned for a message of a schema major this reader does not speak; the hub
// dead-letters such messages instead of guessing at their columns.
type VersionError struct {
	What         string // message type
	Major, Minor uint32
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("proto: %s has schema %d.%d, this reader speaks major %d", e.What, e.Major, e.Minor, SchemaMajor)
}

// CheckVersion accepts every minor of SchemaMajor (older minors read with zero values for what
// they lack, newer ones with their additions ignored) and rejects any other major.
func CheckVersion(what string, major, minor uint32) error {
	if major != SchemaMajor {
		return &VersionError{What: what, Major: major, Minor: minor}
	}
	return nil
}

// Versioned is any message with a schema version.
type Versioned interface {
	proto.Message
	GetSchemaMajor() uint32
	GetSchemaMinor() uint32
}

// ErrNoVersion marks a body without a schema version: empty, or not written by ProfileMate. It is
// a decode error, not a message of another major.
var ErrNoVersion = errors.New("no schema version")

// Unmarshal decodes a message body and checks its schema version. Errors: a body protobuf cannot
// decode; ErrNoVersion (wrapped) for an empty body or one without schema_major; *VersionError for
// another major.
func Unmarshal(b []byte, m Versioned) error {
	name := m.ProtoReflect().Descriptor().Name()
	if len(b) == 0 {
		return fmt.Errorf("proto: decode %s: empty body: %w", name, ErrNoVersion)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return fmt.Errorf("proto: decode %s: %w", name, err)
	}
	if m.GetSchemaMajor() == 0 {
		return fmt.Errorf("proto: decode %s: %w (schema_major 0)", name, ErrNoVersion)
	}
	return CheckVersion(string(name), m.GetSchemaMajor(), m.GetSchemaMinor())
}

// DecodeEventBatch decodes the body of an event subject.
func DecodeEventBatch(b []byte) (*pmpb.EventBatch, error) {
	m := &pmpb.EventBatch{}
	return m, Unmarshal(b, m)
}

// DecodeLifecycle decodes the body of a lifecycle subject.
func DecodeLifecycle(b []byte) (*pmpb.Lifecycle, error) {
	m := &pmpb.Lifecycle{}
	return m, Unmarshal(b, m)
}

// DecodeHeartbeat decodes the body of a heartbeat subject.
func DecodeHeartbeat(b []byte) (*pmpb.Heartbeat, error) {
	m := &pmpb.Heartbeat{}
	return m, Unmarshal(b, m)
}

// DecodeControl decodes the body of a control subject.
func DecodeControl(b []byte) (*pmpb.Control, error) {
	m := &pmpb.Control{}
	return m, Unmarshal(b, m)
}

// Stamp sets the current schema version on a message before it is published.
func Stamp[M interface {
	*pmpb.EventBatch | *pmpb.Lifecycle | *pmpb.Heartbeat | *pmpb.Control
}](m M) M {
	switch x := any(m).(type) {
	case *pmpb.EventBatch:
		x.SchemaMajor, x.SchemaMinor = SchemaMajor, SchemaMinor
	case *pmpb.Lifecycle:
		x.SchemaMajor, x.SchemaMinor = SchemaMajor, SchemaMinor
	case *pmpb.Heartbeat:
		x.SchemaMajor, x.SchemaMinor = SchemaMajor, SchemaMinor
	case *pmpb.Control:
		x.SchemaMajor, x.SchemaMinor = SchemaMajor, SchemaMinor
	}
	return m
}
