package agent

import (
	"fmt"
	"os"
	"os/signal"
	"testing"

	"github.com/profilemate/profilemate/internal/testkit"
)

// benchNATSEnv makes the test binary a plain JetStream server, so a benchmark can measure the
// agent's memory without the server's in the same process.
const benchNATSEnv = "PMAGENT_BENCH_NATS_STORE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(benchNATSEnv); dir != "" {
		ns, err := testkit.NewNATS(testkit.NATSOptions(dir))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(ns.ClientURL())
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
		ns.Shutdown()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
