package natsclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

func TestValidate(t *testing.T) {
	bad := map[string]Config{
		"two methods":      {User: "u", Token: "t"},
		"creds and nkey":   {Creds: "c", NKey: "n"},
		"password alone":   {Password: "p"},
		"cert without key": {TLSCert: "c"},
		"key without cert": {TLSKey: "k"},
	}
	for name, c := range bad {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, c := range []Config{{}, {User: "u", Password: "p", TLSCA: "ca"}, {Token: "t"}, {TLSCert: "c", TLSKey: "k"}} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func TestOptionsNKeySeed(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	good := filepath.Join(t.TempDir(), "u.nk")
	if err := os.WriteFile(good, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	if opts, err := (Config{NKey: good}).Options(); err != nil || len(opts) != 1 {
		t.Errorf("valid seed: %d options, %v", len(opts), err)
	}
	bad := filepath.Join(t.TempDir(), "bad.nk")
	if err := os.WriteFile(bad, []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (Config{NKey: bad}).Options(); err == nil || !strings.Contains(err.Error(), "--nkey") {
		t.Errorf("invalid seed: %v", err)
	}
}
