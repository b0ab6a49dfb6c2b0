package agent

import (
	"strconv"
	"strings"
)

// Subjects and ids follow docs/ARCHITECTURE.md "NATS".

// token escapes s for one subject token: every byte outside [A-Za-z0-9-] becomes _xx.
func token(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			b.WriteByte(c)
			continue
		}
		const hex = "0123456789abcdef"
		b.WriteByte('_')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

func eventSubject(session, host, proc, kind string) string {
	return "pm.v1.ev." + token(session) + "." + token(host) + "." + token(proc) + "." + token(kind)
}

func lifeSubject(session, host, proc string) string {
	return "pm.v1.life." + token(session) + "." + token(host) + "." + token(proc)
}

func hbSubject(host string) string { return "pm.v1.hb." + token(host) }

func ctlSubject(host string) string { return "pm.v1.ctl." + token(host) }

// eventMsgID is the Nats-Msg-Id of an event batch: <session>/<host>/<pid>/<kind>/<first>-<last>.
func eventMsgID(session, host string, pid int, kind string, first, last uint64) string {
	return session + "/" + host + "/" + strconv.Itoa(pid) + "/" + kind + "/" +
		strconv.FormatUint(first, 10) + "-" + strconv.FormatUint(last, 10)
}

// procToken names a process inside its session: api<i>, eng<dp>, w<global rank>; p<pid> when
// its role or rank is unknown.
func procToken(id Ident, pid int) string {
	switch {
	case id.Role == "api_server" && id.Rank >= 0:
		return "api" + strconv.Itoa(id.Rank)
	case id.Role == "engine_core" && id.DP >= 0:
		return "eng" + strconv.Itoa(id.DP)
	case id.Role == "worker" && id.Rank >= 0:
		return "w" + strconv.Itoa(id.Rank)
	}
	return "p" + strconv.Itoa(pid)
}
