package hub

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// TestHTTPTLSAndAuth: the HTTP listener over TLS answers only requests with the bearer token or
// the basic credentials; without them, 401; a plain-HTTP client gets nothing.
func TestHTTPTLSAndAuth(t *testing.T) {
	tf := testkit.WriteTLS(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	srv, err := ListenHTTP(HTTPConfig{Addr: "127.0.0.1:0", TLSCert: tf.ServerCert, TLSKey: tf.ServerKey,
		Token: "tok", User: "ops", Password: "pw"}, mux)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	pem, err := os.ReadFile(tf.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(set func(*http.Request)) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+srv.Addr()+"/healthz", nil)
		set(req)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	cases := []struct {
		name string
		set  func(*http.Request)
		want int
	}{
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok") }, 200},
		{"basic", func(r *http.Request) { r.SetBasicAuth("ops", "pw") }, 200},
		{"nothing", func(*http.Request) {}, 401},
		{"wrong token", func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok2") }, 401},
		{"wrong password", func(r *http.Request) { r.SetBasicAuth("ops", "nope") }, 401},
	}
	for _, c := range cases {
		if got := get(c.set); got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}
	if resp, err := http.Get("http://" + srv.Addr() + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Error("plain HTTP answered on the TLS listener")
	}
}

// TestHTTPBusyAddress: a taken address fails at once, named.
func TestHTTPBusyAddress(t *testing.T) {
	a, err := ListenHTTP(HTTPConfig{Addr: "127.0.0.1:0"}, http.NewServeMux())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if b, err := ListenHTTP(HTTPConfig{Addr: a.Addr()}, http.NewServeMux()); err == nil {
		b.Close()
		t.Fatal("second listener on the same address")
	} else if !strings.Contains(err.Error(), a.Addr()) {
		t.Errorf("error does not name the address: %v", err)
	}
}
