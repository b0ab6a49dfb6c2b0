#!/usr/bin/env bash
# Installs what ProfileMate's build and tests need on a fresh Debian machine:
# protoc (regenerating proto/), Debian's CPU torch for the system python3 (the MoE tensor-path tests),
# headless chromium (the report's browser tests), the Go modules, and the pinned protoc plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if ! command -v protoc >/dev/null || ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends protobuf-compiler python3-torch
fi
# Headless chromium renders the HTML report in report/'s browser tests.
command -v chromium >/dev/null || { $SUDO apt-get update -q; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium; }
go mod download
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
