#!/usr/bin/env bash
# Time from a pod's readiness change to the updated EndpointSlice, with
# 1,000 services and 10,000 pods, and the server's memory and CPU, at the
# end and after IDLE_SECONDS (90) idle.
# Usage: bench/endpoints.sh [SERVICES] [PODS_PER_SERVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
services=${1:-1000}
per=${2:-10}
cargo build --release -q -p wharf -p wharf-bench
report_link_order
work=$(mktemp -d)
trap 'kill $wharf_pid 2>/dev/null; rm -rf "$work"' EXIT
start_wharf_up "$work" --dns-upstream none
pid=$wharf_pid
./target/release/wharf-load endpoint-latency --services "$services" --pods-per-service "$per"
# Resident memory, and of it what is the process's own (not the binary's pages).
rss() { awk '/VmRSS/ {rss = $2} /RssAnon/ {anon = $2} END {print rss/1024 " MiB (" anon/1024 " MiB anonymous)"}' /proc/$pid/status; }
cpu() { awk '{print ($14+$15)/100}' /proc/$pid/stat; }
echo "server RSS: $(rss)"
busy=$(cpu)
echo "server CPU seconds (user+sys): $busy"
# Then idle, past the store's 75 s window of watch history.
idle=${IDLE_SECONDS:-90}
sleep "$idle"
echo "after ${idle} s idle: server RSS $(rss), CPU seconds while idle $(awk -v now="$(cpu)" -v busy="$busy" 'BEGIN {print now - busy}')"
