package agent

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/profilemate/profilemate/internal/stream"
	"github.com/profilemate/profilemate/internal/testkit"
)

func TestUserPassword(t *testing.T) {
	ns := testkit.StartNATS(t, func(o *server.Options) { o.Username, o.Password = "pm", "secret" })
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("pm", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	if _, err := js.CreateStream(t.Context(), stream.Config()); err != nil {
		t.Fatal(err)
	}
	wrong := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL(), User: "pm", Password: "nope"}})
	dialShim(t, wrong.Socket(), 1201, 0, "auth").batch(2)
	waitFor(t, "queued without delivery", func() bool { return wrong.Status().Events == 2 && wrong.Status().Spool.MemBatches > 0 })
	if wrong.Status().NATS.Connected {
		t.Error("connected with a wrong password")
	}
	right := newTestAgent(t, Config{NATS: NATSConfig{URL: ns.ClientURL(), User: "pm", Password: "secret"}})
	dialShim(t, right.Socket(), 1202, 0, "auth").batch(2)
	waitFor(t, "published with the right password", func() bool { return right.Status().NATS.Published >= 1 })
}
