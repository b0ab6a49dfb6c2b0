// Command example is a complete ProfileMate profiler plugin: it reads the workers' forward-pass
// timings and writes, per event batch, one row saying what came in (so a session's input can be
// counted against its output), and at the end one summary row per process and a finding naming
// the slowest worker. docs/plugins.md explains it line by line.
//
// Build it and drop the binary into the hub's plugins folder:
//
//	go build -o example ./plugins/example && pmhub plugins add ./example
package main

import "github.com/profilemate/profilemate/plugins/sdk"

func main() { sdk.Serve(&Example{}) }
