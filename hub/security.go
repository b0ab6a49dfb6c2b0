package hub

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// ServerSecurity is the embedded NATS server's own authentication and TLS (not used with
// Config.NATSURL, where the cluster decides). Authentication is one of: Token; User with
// Password and/or NKeys; or none. TLSClientCA, with TLSCert and TLSKey, makes every client
// present a certificate signed by it (alone it is the authentication, or on top of the others).
type ServerSecurity struct {
	Token    string   // clients connect with this token
	User     string   // clients connect as User with Password
	Password string   // with User
	NKeys    []string // public user nkeys (U…) allowed to connect; each signs with its seed
	TLSCert  string   // PEM server certificate: clients must use TLS
	TLSKey   string   // PEM server key
	// TLSClientCA is a PEM CA bundle: clients must present a certificate it signed.
	TLSClientCA string
}

// HasAuth reports whether clients must authenticate (token, user, nkey or client certificate).
func (c ServerSecurity) HasAuth() bool {
	return c.Token != "" || c.User != "" || len(c.NKeys) > 0 || c.TLSClientCA != ""
}

// HasTLS reports whether the server speaks TLS.
func (c ServerSecurity) HasTLS() bool { return c.TLSCert != "" }

// Validate checks the combination without reading files.
func (c ServerSecurity) Validate() error {
	if c.Token != "" && (c.User != "" || len(c.NKeys) > 0) {
		return errors.New("embedded server: choose a token or users/nkeys, not both")
	}
	if (c.User == "") != (c.Password == "") {
		return errors.New("embedded server: --server-user and --server-password go together")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("embedded server: --server-tls-cert and --server-tls-key go together")
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		return errors.New("embedded server: --server-tls-client-ca needs --server-tls-cert and --server-tls-key")
	}
	for _, k := range c.NKeys {
		if !nkeys.IsValidPublicUserKey(k) {
			return fmt.Errorf("embedded server: %q is not a public user nkey (U…)", k)
		}
	}
	return nil
}

// apply sets the server options for c and returns the public key of the hub's own nkey user,
// added when users or nkeys are configured (the hub's in-process connection signs with it).
func (c ServerSecurity) apply(o *server.Options) (own nkeys.KeyPair, err error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	switch {
	case c.Token != "":
		o.Authorization = c.Token
	case c.User != "" || len(c.NKeys) > 0:
		if c.User != "" {
			o.Users = []*server.User{{Username: c.User, Password: c.Password}}
		}
		for _, k := range c.NKeys {
			o.Nkeys = append(o.Nkeys, &server.NkeyUser{Nkey: k})
		}
		own, err = nkeys.CreateUser()
		if err != nil {
			return nil, fmt.Errorf("embedded server: hub nkey: %w", err)
		}
		pub, err := own.PublicKey()
		if err != nil {
			return nil, fmt.Errorf("embedded server: hub nkey: %w", err)
		}
		o.Nkeys = append(o.Nkeys, &server.NkeyUser{Nkey: pub})
	}
	if c.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("embedded server: tls certificate: %w", err)
		}
		tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if c.TLSClientCA != "" {
			pem, err := os.ReadFile(c.TLSClientCA)
			if err != nil {
				return nil, fmt.Errorf("embedded server: client CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("embedded server: client CA %s: no PEM certificate", c.TLSClientCA)
			}
			tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
			o.TLSVerify = true
		}
		o.TLSConfig, o.TLS = tc, true
	}
	return own, nil
}

// IsLoopback reports whether a listen host ("127.0.0.1", "::1", "localhost") reaches only this
// machine; "", "0.0.0.0", "::", other addresses and other names do not.
func IsLoopback(host string) bool {
	host = strings.Trim(host, "[]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ExposureWarnings returns the warnings for a listener named what on host: beyond loopback
// without authentication (anyone who reaches it can use it), or without TLS (credentials and
// data travel in clear). Empty on loopback.
func ExposureWarnings(what, host string, auth, tls bool) []string {
	if IsLoopback(host) {
		return nil
	}
	where := host
	if where == "" {
		where = "every interface"
	}
	var w []string
	if !auth {
		w = append(w, fmt.Sprintf("%s listens on %s WITHOUT AUTHENTICATION: anyone who reaches it can read and forge data", what, where))
	}
	if !tls {
		w = append(w, fmt.Sprintf("%s listens on %s without TLS: credentials and data travel in clear", what, where))
	}
	return w
}
