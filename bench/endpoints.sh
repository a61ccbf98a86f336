#!/usr/bin/env bash
# Time from a pod's readiness change to the updated EndpointSlice, with
# 1,000 services and 10,000 pods, and the server's memory.
# Usage: bench/endpoints.sh [SERVICES] [PODS_PER_SERVICE]
set -euo pipefail
cd "$(dirname "$0")/.."
services=${1:-1000}
per=${2:-10}
cargo build --release -q -p wharf -p wharf-bench
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
./target/release/wharf up --data-dir "$work/data" --api-listen 127.0.0.1:0 --node-name bench >"$work/out" 2>"$work/err" &
pid=$!
until grep -q "kubectl get services" "$work/out" 2>/dev/null; do sleep 0.1; done
export KUBECONFIG="$work/data/admin.kubeconfig"
./target/release/wharf-load endpoint-latency --services "$services" --pods-per-service "$per"
echo "server RSS: $(awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$pid/status)"
echo "server CPU seconds (user+sys): $(awk '{print ($14+$15)/100}' /proc/$pid/stat)"
