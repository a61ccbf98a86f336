#!/usr/bin/env bash
# What `wharf up`'s memory is made of: its RSS after IDLE_SECONDS (90) idle
# at several sizes, each in a new server, and the least-squares fit
#   RSS = base + services * per_service + endpoints * per_endpoint
# so that a change is seen in the cost it moves (what an endpoint costs,
# what a service costs, what a loaded server costs whatever its size).
# Usage: bench/memory.sh [SERVICESxPODS ...]   (default: the five below)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000x1 1000x20 5000x1 5000x20 1000x100)
[ ${#sizes[@]} -ge 3 ] || { echo "the fit needs three sizes or more" >&2; exit 2; }
idle=${IDLE_SECONDS:-90}
cargo build --release -q -p wharf -p wharf-bench
report_link_order
work=
trap 'kill ${wharf_pid:-} 2>/dev/null || true; [ -z "$work" ] || rm -rf "$work"' EXIT
points=()
for size in "${sizes[@]}"; do
  services=${size%x*}
  per=${size#*x}
  work=$(mktemp -d)
  start_wharf_up "$work" --dns-upstream none
  ./target/release/wharf-load endpoint-latency --services "$services" --pods-per-service "$per" >/dev/null
  # Past the store's 75 s window of watch history: what stays.
  sleep "$idle"
  # RSS in bytes, then the heap and stacks (anon) apart from the binary's pages (file).
  read -r rss split < <(awk '/VmRSS/ {r = $2} /RssAnon/ {a = $2} /RssFile/ {f = $2}
    END {printf "%d anon %d MiB, binary %d MiB\n", r * 1024, a / 1024, f / 1024}' /proc/$wharf_pid/status)
  kill "$wharf_pid"
  wait "$wharf_pid" || true
  rm -rf "$work"
  work=
  endpoints=$((services * per))
  echo "$services services, $endpoints endpoints: RSS $((rss >> 20)) MiB after ${idle} s idle ($split; $((rss / endpoints)) bytes an endpoint)"
  points+=("$services $endpoints $rss")
done
# Solves the normal equations of the three-term fit (Gauss-Jordan).
printf '%s\n' "${points[@]}" | awk '
  { x[NR,1] = 1; x[NR,2] = $1; x[NR,3] = $2; y[NR] = $3; n = NR }
  END {
    for (i = 1; i <= 3; i++) {
      for (j = 1; j <= 3; j++) for (k = 1; k <= n; k++) a[i,j] += x[k,i] * x[k,j]
      for (k = 1; k <= n; k++) a[i,4] += x[k,i] * y[k]
    }
    for (i = 1; i <= 3; i++) {
      p = a[i,i]
      for (j = 1; j <= 4; j++) a[i,j] /= p
      for (r = 1; r <= 3; r++) if (r != i) { f = a[r,i]; for (j = 1; j <= 4; j++) a[r,j] -= f * a[i,j] }
    }
    printf "fit: base %.1f MiB, %.0f bytes a service, %.0f bytes an endpoint\n", a[1,4] / 1048576, a[2,4], a[3,4]
    for (k = 1; k <= n; k++) {
      fit = a[1,4] + a[2,4] * x[k,2] + a[3,4] * x[k,3]
      printf "  %d services, %d endpoints: measured %.1f MiB, fit %.1f MiB\n", x[k,2], x[k,3], y[k] / 1048576, fit / 1048576
    }
  }'
