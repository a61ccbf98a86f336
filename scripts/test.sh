#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the integration tests drive (kubectl is preinstalled).
missing=()
command -v dig >/dev/null || missing+=(dnsutils)
command -v ip >/dev/null || missing+=(iproute2)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update
  apt-get install -y "${missing[@]}"
fi

cargo test --workspace --locked "$@"
