#!/bin/sh
# Regenerates trace.pb.go from trace.proto with Debian's protoc and the pinned protoc-gen-go
# (scripts/setup.sh installs both). Run from anywhere: export/perfettopb/generate.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
protoc -I . --plugin=protoc-gen-go="$(go env GOPATH)/bin/protoc-gen-go" --go_out=. --go_opt=paths=source_relative trace.proto
