#!/usr/bin/env bash
# How fast an endpoint change reaches the data plane with SERVICES other
# services in it: the userspace proxy and the nftables mode side by side,
# each a `wharf up` in a network namespace of this script's own (so the
# `ip wharf` table is private). Times from the EndpointSlice write until a
# new connection to the cluster IP reaches the new endpoint (API, watch,
# proxy sync and, for nftables, the netlink transaction).
# Usage: bench/proxy-sync.sh [SERVICES] [CHANGES]   (default 10000 100)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
services=${1:-10000}
changes=${2:-100}
if [ -z "${WHARF_BENCH_NETNS:-}" ]; then
  cargo build --release -q -p wharf -p wharf-bench
  exec env WHARF_BENCH_NETNS=1 unshare -n "$0" "$@"
fi
ip link set lo up

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for mode in userspace nftables; do
  ./target/release/wharf up --data-dir "$work/$mode" --api-listen 127.0.0.1:0 --node-name "sync-$mode" \
    --dns-upstream none --metrics-listen 127.0.0.1:0 --proxy-mode "$mode" >"$work/$mode.out" 2>&1 &
  pid=$!
  pids+=($pid)
  until grep -q "kubectl get services" "$work/$mode.out" 2>/dev/null; do kill -0 $pid; sleep 0.1; done
  echo "== $mode, $services services =="
  KUBECONFIG="$work/$mode/admin.kubeconfig" ./target/release/wharf-load proxy-sync --services "$services" --changes "$changes"
  echo "wharf CPU: $(awk '{printf "%.1f s", ($14+$15)/100}' /proc/$pid/stat), RSS: $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
  kill $pid; wait $pid || true
done
