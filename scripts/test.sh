#!/usr/bin/env bash
# The whole test suite: installs what the tests need, checks formatting,
# lints and unused dependencies, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the build needs (make, for jemalloc) and the tests
# drive (kubectl is preinstalled): dig, ip and
# ss, nft (reads the proxy's nftables rules back), curl, python3 (backend processes), etcd and etcdctl (the store's and the
# several-node tests) and
# script (a terminal for `kubectl exec -t`); the official Python client;
# npm (and node) for the official JavaScript client; Chromium, its
# WebDriver and Selenium for the dashboard's browser test.
missing=()
command -v make >/dev/null || missing+=(make)
command -v dig >/dev/null || missing+=(dnsutils)
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v script >/dev/null || missing+=(bsdutils)
/usr/bin/python3 -c 'import kubernetes' 2>/dev/null || missing+=(python3-kubernetes)
command -v npm >/dev/null || missing+=(npm)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
/usr/bin/python3 -c 'import selenium' 2>/dev/null || missing+=(python3-selenium)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  apt-get install -y "${missing[@]}"
fi
# The official JavaScript client, pinned by its lock file, from npm.
npm ci --prefix crates/wharf/tests/clients/js --no-audit --no-fund --loglevel=error
# The unused-dependency check, from crates.io.
command -v cargo-machete >/dev/null || cargo install --locked cargo-machete

cargo fmt --all --check
cargo machete
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
./scripts/readme-test.sh
