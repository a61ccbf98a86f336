#!/usr/bin/env bash
# How long `kubectl get svc -A` takes with 10,000 services, and the memory
# of the server holding them. Usage: bench/api-list.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
count=${1:-10000}
cargo build --release -q -p wharf -p wharf-bench
work=$(mktemp -d)
trap 'kill $wharf_pid 2>/dev/null; rm -rf "$work"' EXIT
start_wharf_up "$work" --dns-upstream none
pid=$wharf_pid
./target/release/wharf-load services "$count"
kubectl get svc -A >/dev/null # warm the discovery cache
rss() { awk '/VmRSS/ {print $2/1024 " MiB"}' /proc/$pid/status; }
echo "server RSS with $count services: $(rss)"
for mode in "" "-o wide" "-o json"; do
  best=999
  for _ in 1 2 3 4 5; do
    s=$(date +%s.%N); kubectl get svc -A $mode >/dev/null; e=$(date +%s.%N)
    best=$(echo "$s $e $best" | awk '{d=$2-$1; print (d<$3)?d:$3}')
  done
  echo "kubectl get svc -A $mode: best of 5 = ${best}s"
done
echo "rows: $(kubectl get svc -A --no-headers | wc -l)"
echo "server RSS after the lists: $(rss)"
