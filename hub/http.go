package hub

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
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

// HTTPServer is a running HTTP listener.
type HTTPServer struct {
	srv *http.Server
	ln  net.Listener
}

// ListenHTTP binds cfg.Addr at once (an address in use fails here, named) and serves h on it in
// the background, behind cfg's TLS and authentication.
func ListenHTTP(cfg HTTPConfig, h http.Handler) (*HTTPServer, error) {
	if err := cfg.Validate(); err != nil {
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
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", cfg.Addr, err)
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	s := &HTTPServer{ln: ln, srv: &http.Server{Handler: RequireAuth(cfg, h), ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address (with the real port when cfg.Addr asked for port 0).
func (s *HTTPServer) Addr() string { return s.ln.Addr().String() }

// Close stops the listener and open connections.
func (s *HTTPServer) Close() error { return s.srv.Close() }

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
