package hub

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/profilemate/profilemate/internal/testkit"
)

func TestExposureWarnings(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LocalHost"} {
		if w := ExposureWarnings("x", host, false, false); len(w) != 0 {
			t.Errorf("%q is loopback, got warnings %v", host, w)
		}
	}
	for _, host := range []string{"", "0.0.0.0", "::", "10.1.2.3", "192.168.0.5", "hub.example.com"} {
		w := ExposureWarnings("embedded NATS", host, false, false)
		if len(w) != 2 || !strings.Contains(w[0], "WITHOUT AUTHENTICATION") || !strings.Contains(w[1], "without TLS") {
			t.Errorf("%q without auth and TLS: %v", host, w)
		}
		if w := ExposureWarnings("embedded NATS", host, true, false); len(w) != 1 || !strings.Contains(w[0], "without TLS") {
			t.Errorf("%q with auth, without TLS: %v", host, w)
		}
		if w := ExposureWarnings("embedded NATS", host, true, true); len(w) != 0 {
			t.Errorf("%q with auth and TLS: %v", host, w)
		}
	}
}

func TestServerSecurityValidate(t *testing.T) {
	bad := []ServerSecurity{
		{Token: "t", User: "u", Password: "p"},
		{User: "u"},
		{Password: "p"},
		{TLSCert: "c"},
		{TLSClientCA: "ca"},
		{NKeys: []string{"SUAXXX"}},
		{Token: "t", NKeys: []string{"UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}},
	}
	for _, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// startSecureHub starts a hub whose embedded server has TLS and sec, and checks the hub's own
// connection works (its stream and consumer exist).
func startSecureHub(t *testing.T, sec ServerSecurity) *Server {
	t.Helper()
	s, _ := startHubCfg(t, Config{DataDir: t.TempDir(), Server: sec})
	return s
}

// connectOK connects with opts, publishes one message into the stream and waits for the hub to
// count it.
func connectOK(t *testing.T, s *Server, what string, opts ...nats.Option) {
	t.Helper()
	before := s.Counters().Messages
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("%s: refused: %v", what, err)
	}
	defer nc.Close()
	publish(t, nc, "pm.v1.ev.sec.h1.w0.kv_5fcache", jsonMsg{V: 1, Batch: kvBatch("h1", 7, 1)})
	waitFor(t, what+": message consumed", func() bool { return s.Counters().Messages > before })
}

func refused(t *testing.T, s *Server, what string, opts ...nats.Option) {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), append(opts, nats.Timeout(5*time.Second))...)
	if err == nil {
		nc.Close()
		t.Errorf("%s: connected", what)
	}
}

// TestEmbeddedServerAuthAndTLS: each authentication method of the embedded server over TLS lets
// the right client in and refuses a client without credentials, with wrong ones, or without TLS
// trust; the hub's own connection keeps working in every mode.
func TestEmbeddedServerAuthAndTLS(t *testing.T) {
	tf := testkit.WriteTLS(t)
	ca := nats.RootCAs(tf.CA)
	tlsOnly := ServerSecurity{TLSCert: tf.ServerCert, TLSKey: tf.ServerKey}

	t.Run("token", func(t *testing.T) {
		sec := tlsOnly
		sec.Token = "s3cret-token"
		s := startSecureHub(t, sec)
		connectOK(t, s, "token", ca, nats.Token("s3cret-token"))
		refused(t, s, "no token", ca)
		refused(t, s, "wrong token", ca, nats.Token("guess"))
		refused(t, s, "right token, server not trusted", nats.Token("s3cret-token"))
	})
	t.Run("user-nkey", func(t *testing.T) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := kp.PublicKey()
		seed, _ := kp.Seed()
		seedFile := filepath.Join(t.TempDir(), "agent.nk")
		if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
			t.Fatal(err)
		}
		stranger, _ := nkeys.CreateUser()
		spub, _ := stranger.PublicKey()
		sec := tlsOnly
		sec.User, sec.Password, sec.NKeys = "agent", "pw", []string{pub}
		s := startSecureHub(t, sec)
		connectOK(t, s, "user/password", ca, nats.UserInfo("agent", "pw"))
		nkOpt, err := nats.NkeyOptionFromSeed(seedFile)
		if err != nil {
			t.Fatal(err)
		}
		connectOK(t, s, "nkey", ca, nkOpt)
		refused(t, s, "no credentials", ca)
		refused(t, s, "wrong password", ca, nats.UserInfo("agent", "nope"))
		refused(t, s, "unknown nkey", ca, nats.Nkey(spub, stranger.Sign))
	})
	t.Run("client-certificate", func(t *testing.T) {
		sec := tlsOnly
		sec.TLSClientCA = tf.CA
		s := startSecureHub(t, sec)
		connectOK(t, s, "client certificate", ca, nats.ClientCert(tf.ClientCert, tf.ClientKey))
		refused(t, s, "no client certificate", ca)
		refused(t, s, "certificate of another CA", ca, nats.ClientCert(tf.OtherClientCert, tf.OtherClientKey))
	})
}
