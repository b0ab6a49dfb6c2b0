#!/bin/sh
# Regenerates plugins/pluginpb from plugins/proto/profilemate/plugin/v1/plugin.proto with the
# protoc and pinned plugins scripts/setup.sh installs (the same as proto/generate.sh). It imports
# proto/profilemate/v1/profilemate.proto for Process and Value. Run from anywhere:
#   plugins/generate.sh
set -eu
GEN_GO=v1.36.12
GEN_GRPC=1.5.1
here=$(cd "$(dirname "$0")" && pwd)
bin=$(go env GOPATH)/bin
command -v protoc >/dev/null || { echo "protoc missing: scripts/setup.sh installs it" >&2; exit 1; }
"$bin/protoc-gen-go" --version 2>/dev/null | grep -q "$GEN_GO" || { echo "protoc-gen-go $GEN_GO missing: scripts/setup.sh" >&2; exit 1; }
"$bin/protoc-gen-go-grpc" --version 2>/dev/null | grep -q "$GEN_GRPC" || { echo "protoc-gen-go-grpc $GEN_GRPC missing: scripts/setup.sh" >&2; exit 1; }
cd "$here"
protoc -I proto -I ../proto \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" --go_out=. --go_opt=module=github.com/profilemate/profilemate/plugins \
	--plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" --go-grpc_out=. --go-grpc_opt=module=github.com/profilemate/profilemate/plugins \
	profilemate/plugin/v1/plugin.proto
echo "generated: $(ls pluginpb)"
