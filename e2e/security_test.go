package e2e

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/profilemate/profilemate/hub"
	"github.com/profilemate/profilemate/internal/testkit"
)

// TestSecureHubEachAuthMethod runs the real pmhub with its embedded server on TLS and each
// authentication method (token, user/password, nkey, client certificate), then with the same
// client flags a real `pmagent run` of the simulator and a `pmhub tail`: the session arrives
// complete on the hub, tail prints its events, and a client without credentials is refused.
func TestSecureHubEachAuthMethod(t *testing.T) {
	tf := testkit.WriteTLS(t)
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
	cases := []struct {
		name           string
		server, client []string
	}{
		{"token", []string{"--server-auth-token", "tok-3c7f"}, []string{"--token", "tok-3c7f"}},
		{"user", []string{"--server-user", "agent", "--server-password", "pw-81e2"}, []string{"--user", "agent", "--password", "pw-81e2"}},
		{"nkey", []string{"--server-nkey", pub}, []string{"--nkey", seedFile}},
		{"client-cert", []string{"--server-tls-client-ca", tf.CA}, []string{"--tls-cert", tf.ClientCert, "--tls-key", tf.ClientKey}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := t.TempDir()
			h := startHub(t, data, freeAddr(t), append([]string{"--server-tls-cert", tf.ServerCert, "--server-tls-key", tf.ServerKey}, c.server...)...)
			if !strings.HasPrefix(h.url, "tls://") {
				t.Errorf("hub URL %q does not say TLS", h.url)
			}
			if nc, err := nats.Connect(h.url, nats.RootCAs(tf.CA), nats.Timeout(5*time.Second)); err == nil {
				nc.Close()
				t.Fatal("a client without credentials connected")
			}
			client := append([]string{"--nats", h.url, "--tls-ca", tf.CA}, c.client...)
			session := "sec-" + c.name

			tail := exec.Command(bin(t, "pmhub"), append(append([]string{"tail"}, client...), "--session", session, "--json")...)
			tail.Env = os.Environ()
			stdout, _ := tail.StdoutPipe()
			stderr, _ := tail.StderrPipe()
			if err := tail.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = tail.Process.Kill(); _ = tail.Wait() })
			ready := make(chan struct{})
			var tailErr strings.Builder
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					if strings.Contains(sc.Text(), "subscribed to") {
						close(ready)
					}
					tailErr.WriteString(sc.Text() + "\n")
				}
			}()
			events := make(chan string, 1<<16)
			go func() {
				sc := bufio.NewScanner(stdout)
				sc.Buffer(make([]byte, 1<<20), 1<<20)
				for sc.Scan() {
					events <- sc.Text()
				}
			}()
			select {
			case <-ready:
			case <-time.After(30 * time.Second):
				t.Fatalf("pmhub tail did not subscribe with the same credentials")
			}

			py, env, _ := agSim(t, "PMSIM_TP=1", "PMSIM_REQUESTS=4")
			args := append(append([]string{"run"}, client...), "--host", "sec-host", "--session", session, "--spool-dir", t.TempDir())
			p := agStart(t, env, append(args, agSimArgs(py)...)...)
			if err := p.wait(t, 4*time.Minute); err != nil {
				t.Fatalf("pmagent run: %v\n%s", err, p.output())
			}
			if !strings.Contains(p.output(), "all events delivered") {
				t.Fatalf("pmagent did not deliver everything:\n%s", p.output())
			}
			dir := hub.SessionDir(data, session)
			deadline := time.Now().Add(time.Minute)
			for {
				m, err := hub.ReadMetadata(dir)
				if err == nil && m.Status == hub.StatusEnded {
					var rows int64
					for _, n := range m.Rows {
						rows += n
					}
					if rows == 0 {
						t.Fatalf("session %s ended with no rows", session)
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("session %s did not end on the hub (%v)", session, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			select {
			case line := <-events:
				var ev struct{ Session string }
				if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.Session != session {
					t.Errorf("tail line %q: session %q, err %v", line, ev.Session, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("pmhub tail printed no event of %s; stderr:\n%s", session, tailErr.String())
			}
		})
	}
}
