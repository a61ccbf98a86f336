#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive (kubectl is preinstalled): dig, ip,
# curl, python3 (backend processes), etcd for the several-node test, and
# protoc, which the etcd client's build needs.
missing=()
command -v dig >/dev/null || missing+=(dnsutils)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  apt-get install -y "${missing[@]}"
fi

cargo test --workspace --locked --features wharf/etcd "$@"
