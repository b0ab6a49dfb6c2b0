// Package testkit holds the helpers every package's tests share: an embedded nats-server with
// JetStream on loopback (random port, temporary store) and the runner of the Python unittest
// suites under each supported interpreter. Only tests import it.
package testkit
