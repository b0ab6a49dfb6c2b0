package proto

import (
	"errors"
	"fmt"
	"regexp"
	"unicode/utf8"
)

// The name grammar: what a session id, a host name and an event kind may be. Every place a name
// enters (pmagent's flags and environment, the shim's hello, a kind declared at run time) checks
// it here, so a name that passes can always be published and stored. The rules are exported to
// Python in the shim's _tables.json ("names"), read by profilemate.schema.
//
// Limits keep the longest event subject (session and host escaped, up to 3 bytes per byte) near
// 1.3 KB, well under NATS's 4 KB control line, and the message id under NATS's header limits.
const (
	MaxSessionLen = 128 // bytes
	MaxHostLen    = 253 // bytes, as a DNS name
	MaxKindLen    = 64  // bytes
)

// NameRule is one name's grammar: Pattern must match the whole name (no anchors in the text, so
// Go and Python read it alike), and the name has 1 to MaxLen bytes.
type NameRule struct {
	What    string `json:"what"`
	Pattern string `json:"pattern"`
	MaxLen  int    `json:"max_len"`
	Rule    string `json:"rule"` // the rule in words, quoted in errors

	re *regexp.Regexp
}

// The rules of session ids, host names and kinds.
var (
	SessionName = newRule("session", `[A-Za-z0-9][A-Za-z0-9._-]*`, MaxSessionLen,
		"letters, digits, '.', '_' and '-', starting with a letter or digit")
	HostName = newRule("host", `[A-Za-z0-9][A-Za-z0-9._-]*`, MaxHostLen,
		"letters, digits, '.', '_' and '-', starting with a letter or digit")
	KindName = newRule("kind", `[a-z][a-z0-9_]*`, MaxKindLen,
		"lowercase letters, digits and '_', starting with a letter")
)

func newRule(what, pattern string, max int, rule string) *NameRule {
	return &NameRule{What: what, Pattern: pattern, MaxLen: max, Rule: rule,
		re: regexp.MustCompile(`^(?:` + pattern + `)$`)}
}

// ErrName marks a name that breaks its grammar; errors.Is works on every Validate error.
var ErrName = errors.New("bad name")

// Validate returns nil when name follows the rule, else an error wrapping ErrName that names the
// rule: e.g. `bad name: session "my run": only letters, digits, ... (at most 128 bytes)`.
func (r *NameRule) Validate(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty %s", ErrName, r.What)
	case len(name) > r.MaxLen:
		return fmt.Errorf("%w: %s of %d bytes: at most %d", ErrName, r.What, len(name), r.MaxLen)
	case !r.re.MatchString(name):
		show := name
		if !utf8.ValidString(show) || len(show) > 40 {
			show = fmt.Sprintf("%.40q", name)
		} else {
			show = fmt.Sprintf("%q", name)
		}
		return fmt.Errorf("%w: %s %s: only %s (at most %d bytes)", ErrName, r.What, show, r.Rule, r.MaxLen)
	}
	return nil
}

// ValidateSession checks a session id against SessionName.
func ValidateSession(s string) error { return SessionName.Validate(s) }

// ValidateHost checks a host name against HostName.
func ValidateHost(s string) error { return HostName.Validate(s) }

// ValidateKind checks a kind against KindName.
func ValidateKind(s string) error { return KindName.Validate(s) }

// NameRules returns the rules in a fixed order: session, host, kind.
func NameRules() []*NameRule { return []*NameRule{SessionName, HostName, KindName} }
