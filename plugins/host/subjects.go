package host

import "github.com/profilemate/profilemate/proto"

// Derived rows on NATS. They use the event subject scheme under their own prefix, which is not
// part of the PROFILEMATE stream, so the hub's ingest consumer never reads them back:
//
//	pm.v1.dv.<session>.<host of the hub>.plugin-<name>.<kind>  (core NATS, body: EventBatch)
const (
	DerivedPrefix = proto.SubjectRoot + ".dv"
	RolePlugin    = "plugin"
)

// ProcToken is a plugin's process token in subjects: plugin-<name>.
func ProcToken(name string) string { return "plugin-" + name }

// DerivedSubject is pm.v1.dv.<session>.<host>.<proc>.<kind>, every token escaped as in
// proto.EventSubject.
func DerivedSubject(session, host, proc, kind string) string {
	return DerivedPrefix + "." + proto.Escape(session) + "." + proto.Escape(host) + "." + proto.Escape(proc) + "." + proto.Escape(kind)
}

// DerivedFilter matches derived subjects; an empty field matches any token.
func DerivedFilter(session, host, proc, kind string) string {
	w := func(s string) string {
		if s == "" {
			return "*"
		}
		return proto.Escape(s)
	}
	return DerivedPrefix + "." + w(session) + "." + w(host) + "." + w(proc) + "." + w(kind)
}
