package hub

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// DefaultHTTP is the HTTP listener's default address: loopback only.
const DefaultHTTP = "127.0.0.1:9464"

// HTTPConfig is the hub's HTTP listener (/metrics, /healthz, /api/…, report pages). Beyond
// loopback it should have TLS (TLSCert + TLSKey) and a bearer Token or basic User/Password;
// with both set either is accepted.
type HTTPConfig struct {
	Addr     string // host:port; empty: no listener
	TLSCert  string // PEM certificate
	TLSKey   string // PEM key
	Token    string // clients send "Authorization: Bearer <Token>"
	User     string // basic authentication user (with Password)
	Password string
}

// HasAuth reports whether requests must authenticate.
func (c HTTPConfig) HasAuth() bool { return c.Token != "" || c.User != "" }

// Validate checks the combination without reading files.
func (c HTTPConfig) Validate() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--http-tls-cert and --http-tls-key go together")
	}
	if (c.User == "") != (c.Password == "") {
		return errors.New("--http-user and --http-password go together")
	}
	return nil
}

// HTTPServer is an HTTP listener: bound by BindHTTP, serving once Serve is called.
type HTTPServer struct {
	cfg HTTPConfig
	srv *http.Server
	ln  net.Listener
}

// CheckAddr checks a listen address ("host:port", port 0–65535; -1 is taken as 0, a random port)
// without binding it; the error names flag ("--http") and the address.
func CheckAddr(flag, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want host:port (for example 127.0.0.1:9464): %w", flag, addr, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < -1 || n > 65535 {
		if _, lerr := net.LookupPort("tcp", port); lerr != nil {
			return fmt.Errorf("%s %q: port %q is not a number from 0 to 65535", flag, addr, port)
		}
	}
	return nil
}

// ListenHTTP binds cfg.Addr at once (an address in use fails here, named) and serves h on it in
// the background, behind cfg's TLS and authentication.
func ListenHTTP(cfg HTTPConfig, h http.Handler) (*HTTPServer, error) {
	s, err := BindHTTP(cfg)
	if err != nil {
		return nil, err
	}
	s.Serve(h)
	return s, nil
}

// BindHTTP checks cfg, loads its TLS certificate and binds cfg.Addr, serving nothing yet (a
// connection waits in the listen queue until Serve): a bad address, certificate or an address
// in use fails here, before the caller starts anything else. Errors name the address or file.
func BindHTTP(cfg HTTPConfig) (*HTTPServer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CheckAddr("http", cfg.Addr); err != nil {
		return nil, err
	}
	var tc *tls.Config
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("http tls certificate: %w", err)
		}
		tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	addr := cfg.Addr
	if host, port, _ := net.SplitHostPort(addr); port == "-1" {
		addr = net.JoinHostPort(host, "0")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", cfg.Addr, err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	return &HTTPServer{cfg: cfg, ln: ln}, nil
}

// Serve serves h on the bound listener in the background, behind the TLS and authentication of
// BindHTTP's configuration. Call it once.
func (s *HTTPServer) Serve(h http.Handler) {
	s.srv = &http.Server{Handler: RequireAuth(s.cfg, h), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.srv.Serve(s.ln) }()
}

// Addr is the bound address (with the real port when cfg.Addr asked for port 0).
func (s *HTTPServer) Addr() string { return s.ln.Addr().String() }

// Close stops the listener and open connections.
func (s *HTTPServer) Close() error {
	if s.srv == nil {
		return s.ln.Close()
	}
	return s.srv.Close()
}

// RequireAuth wraps h so that, when cfg has a token or a user, every request must carry the
// bearer token or the basic credentials; others get 401.
func RequireAuth(cfg HTTPConfig, h http.Handler) http.Handler {
	if !cfg.HasAuth() {
		return h
	}
	eq := func(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := false
		if cfg.Token != "" {
			ok = eq(r.Header.Get("Authorization"), "Bearer "+cfg.Token)
		}
		if !ok && cfg.User != "" {
			u, p, has := r.BasicAuth()
			ok = has && eq(u, cfg.User) && eq(p, cfg.Password)
		}
		if !ok {
			if cfg.User != "" {
				w.Header().Set("WWW-Authenticate", `Basic realm="pmhub"`)
			} else {
				w.Header().Set("WWW-Authenticate", `Bearer realm="pmhub"`)
			}
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}
