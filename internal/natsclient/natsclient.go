// Package natsclient is the one set of NATS client settings pmagent and every pmhub command that
// connects to NATS share: the same flags, the same PROFILEMATE_* variables, the same checks, and
// the nats.go options they turn into.
package natsclient

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/urfave/cli/v2"
)

// Flag names and their environment variables.
const (
	FlagURL      = "nats"
	FlagCreds    = "creds"
	FlagNKey     = "nkey"
	FlagUser     = "user"
	FlagPassword = "password"
	FlagToken    = "token"
	FlagTLSCA    = "tls-ca"
	FlagTLSCert  = "tls-cert"
	FlagTLSKey   = "tls-key"
)

// Config is how a client reaches NATS. Every field is optional; at most one of Creds, NKey,
// User (with Password) and Token may be set.
type Config struct {
	URL      string // one or more nats:// or tls:// URLs, comma separated
	Creds    string // path of a .creds file (JWT + nkey seed; decentralised auth)
	NKey     string // path of a file holding a user nkey seed (SU…)
	User     string
	Password string
	Token    string
	TLSCA    string // PEM CA bundle that verifies the server
	TLSCert  string // PEM client certificate (with TLSKey)
	TLSKey   string // PEM client key
}

// Flags returns the client flags; defaultURL is --nats's default and urlUsage its help text.
func Flags(defaultURL, urlUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FlagURL, Value: defaultURL, Usage: urlUsage, EnvVars: []string{"PROFILEMATE_NATS"}},
		&cli.StringFlag{Name: FlagCreds, Usage: "NATS .creds file (JWT and nkey seed)", EnvVars: []string{"PROFILEMATE_NATS_CREDS"}},
		&cli.StringFlag{Name: FlagNKey, Usage: "file holding a NATS user nkey seed (SU…)", EnvVars: []string{"PROFILEMATE_NATS_NKEY"}},
		&cli.StringFlag{Name: FlagUser, Usage: "NATS user name (with --password)", EnvVars: []string{"PROFILEMATE_NATS_USER"}},
		&cli.StringFlag{Name: FlagPassword, Usage: "NATS password", EnvVars: []string{"PROFILEMATE_NATS_PASSWORD"}},
		&cli.StringFlag{Name: FlagToken, Usage: "NATS authentication token", EnvVars: []string{"PROFILEMATE_NATS_TOKEN"}},
		&cli.StringFlag{Name: FlagTLSCA, Usage: "PEM CA bundle that verifies the NATS server", EnvVars: []string{"PROFILEMATE_NATS_TLS_CA"}},
		&cli.StringFlag{Name: FlagTLSCert, Usage: "PEM client certificate for NATS (with --tls-key)", EnvVars: []string{"PROFILEMATE_NATS_TLS_CERT"}},
		&cli.StringFlag{Name: FlagTLSKey, Usage: "PEM client key for NATS", EnvVars: []string{"PROFILEMATE_NATS_TLS_KEY"}},
	}
}

// FromCLI reads the flags Flags declared.
func FromCLI(c *cli.Context) Config {
	return Config{
		URL: c.String(FlagURL), Creds: c.String(FlagCreds), NKey: c.String(FlagNKey),
		User: c.String(FlagUser), Password: c.String(FlagPassword), Token: c.String(FlagToken),
		TLSCA: c.String(FlagTLSCA), TLSCert: c.String(FlagTLSCert), TLSKey: c.String(FlagTLSKey),
	}
}

// HasAuthOrTLS reports whether any credential or TLS setting is given.
func (c Config) HasAuthOrTLS() bool {
	return c.Creds != "" || c.NKey != "" || c.User != "" || c.Password != "" || c.Token != "" ||
		c.TLSCA != "" || c.TLSCert != "" || c.TLSKey != ""
}

// Validate checks the combination: one authentication method at most, --password only with
// --user, --tls-cert with --tls-key.
func (c Config) Validate() error {
	var methods []string
	for _, m := range []struct{ name, v string }{{"--creds", c.Creds}, {"--nkey", c.NKey}, {"--user", c.User}, {"--token", c.Token}} {
		if m.v != "" {
			methods = append(methods, m.name)
		}
	}
	if len(methods) > 1 {
		return fmt.Errorf("choose one NATS authentication method, got %v", methods)
	}
	if c.Password != "" && c.User == "" {
		return errors.New("--password needs --user")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	return nil
}

// Options turns the settings into nats.go options (after Validate). Errors: an invalid
// combination, an nkey seed file that cannot be read or parsed.
func (c Config) Options() ([]nats.Option, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	var opts []nats.Option
	if c.TLSCA != "" {
		opts = append(opts, nats.RootCAs(c.TLSCA))
	}
	if c.TLSCert != "" {
		opts = append(opts, nats.ClientCert(c.TLSCert, c.TLSKey))
	}
	switch {
	case c.Creds != "":
		opts = append(opts, nats.UserCredentials(c.Creds))
	case c.NKey != "":
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			return nil, fmt.Errorf("--nkey %s: %w", c.NKey, err)
		}
		opts = append(opts, o)
	case c.User != "":
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	case c.Token != "":
		opts = append(opts, nats.Token(c.Token))
	}
	return opts, nil
}

// IsAuthError reports whether err is a NATS server refusing the client: credentials wrong or
// missing ("authorization violation"), expired or revoked.
func IsAuthError(err error) bool {
	for _, e := range []error{nats.ErrAuthorization, nats.ErrAuthExpired, nats.ErrAuthRevoked, nats.ErrAccountAuthExpired} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// AuthHint is what an authorization error adds for the person reading it: the flags that carry
// the credentials.
const AuthHint = "the NATS server refused the credentials (--token, --user/--password, --nkey, --creds and their PROFILEMATE_NATS_* variables)"

// NotConnected is the error of a publish or request made while not connected to NATS, with why:
// the connection's last error (for wrong credentials the server's "authorization violation", with
// AuthHint), not the client's generic "connection closed" or "outbound buffer limit exceeded".
// last may be nil (not known yet).
func NotConnected(last error) error {
	switch {
	case last == nil:
		return errors.New("not connected to NATS")
	case IsAuthError(last):
		return fmt.Errorf("not connected to NATS: %s: %w", AuthHint, last)
	}
	return fmt.Errorf("not connected to NATS: %w", last)
}

// Redact is urls (comma separated) with any password in them replaced by "xxxxx", for logs.
func Redact(urls string) string {
	parts := strings.Split(urls, ",")
	for i, s := range parts {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
