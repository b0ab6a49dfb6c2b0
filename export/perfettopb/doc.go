// Package perfettopb is the generated Go code of trace.proto: the subset of Perfetto's trace
// format pmhub export writes, used by the tests to read traces back independently of the writer.
package perfettopb

//go:generate ./generate.sh
