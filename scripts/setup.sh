#!/usr/bin/env bash
# Installs what ProfileMate's build and tests need on a fresh Debian machine: the Debian packages
# below (each checked on its own, so a package added to the list is installed even when the others
# are present), the Go modules, and the pinned protoc plugins.
set -euo pipefail
cd "$(dirname "$0")/.."

# One line per Debian package: the package, then a command that succeeds when it is usable.
# To add a package, add a line.
PACKAGES=(
  "protobuf-compiler|command -v protoc"                 # regenerating proto/
  "python3-torch|/usr/bin/python3 -c 'import torch'"    # the MoE tensor-path tests (CPU torch)
  "prometheus|command -v promtool"                      # promtool check metrics on the hub's /metrics
  "chromium|command -v chromium"                        # the report's headless browser tests
  "ansible-core|command -v ansible-playbook"            # deploy/: the playbook applied in the deploy test
  "ansible-lint|command -v ansible-lint"                # deploy/: lint of the roles
)

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
missing=()
for entry in "${PACKAGES[@]}"; do
  pkg="${entry%%|*}"
  check="${entry#*|}"
  if ! bash -c "$check" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
go mod download
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
