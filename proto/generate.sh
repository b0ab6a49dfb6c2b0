#!/bin/sh
# Regenerates proto/pmpb from proto/profilemate/v1/*.proto with Debian's protoc and the pinned
# plugins (scripts/setup.sh installs them into $(go env GOPATH)/bin). Run from anywhere:
#   proto/generate.sh
set -eu
GEN_GO=v1.36.12
GEN_GRPC=1.5.1
here=$(cd "$(dirname "$0")" && pwd)
bin=$(go env GOPATH)/bin
command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler" >&2; exit 1; }
if ! "$bin/protoc-gen-go" --version 2>/dev/null | grep -q "$GEN_GO"; then
	GOFLAGS=-mod=mod go install google.golang.org/protobuf/cmd/protoc-gen-go@$GEN_GO
fi
if ! "$bin/protoc-gen-go-grpc" --version 2>/dev/null | grep -q "$GEN_GRPC"; then
	GOFLAGS=-mod=mod go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v$GEN_GRPC
fi
cd "$here"
protoc -I . \
	--plugin=protoc-gen-go="$bin/protoc-gen-go" --go_out=. --go_opt=module=github.com/profilemate/profilemate/proto \
	--plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" --go-grpc_out=. --go-grpc_opt=module=github.com/profilemate/profilemate/proto \
	profilemate/v1/*.proto
echo "generated: $(ls pmpb)"
