#!/usr/bin/env bash
# Writes crates/wharf/link-order.txt: every function of the release binary
# that `wharf up` executes through startup, a small endpoint load,
# connections through the proxy, kubectl and DNS queries, as callgrind saw
# them run. The linker places these first (crates/wharf/build.rs). Run it
# again after large changes: a name it no longer finds costs memory, never
# correctness. bench/endpoints.sh and bench/memory.sh report how much of
# the list a binary defines.
# Usage: bench/link-order.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need_packages valgrind:valgrind dig:dnsutils
cargo build --release -q --locked -p wharf -p wharf-bench
work=$(mktemp -d)
trap 'kill ${wharf_pid:-} 2>/dev/null; rm -rf "$work"' EXIT
WHARF_WRAP="valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/callgrind.out" \
  start_wharf_up "$work" --dns-upstream none
dns=$(sed -n 's/^ *Cluster DNS: *\([0-9.]*\):53 .*/\1/p' "$work/wharf.out")
[ -n "$dns" ] || { echo "no Cluster DNS address in wharf up's output" >&2; exit 1; }
./target/release/wharf-load endpoint-latency --services 20 --pods-per-service 5
# Both loads name their services svc-0, svc-1, …
kubectl delete $(kubectl get services -o name | grep '^service/svc-') >/dev/null
./target/release/wharf-load proxy-sync --services 20 --changes 10
kubectl get services,endpointslices,pods --all-namespaces >/dev/null
kubectl describe service kubernetes >/dev/null
# Under callgrind the server answers slowly.
dig +short +tries=1 +time=30 @"$dns" kubernetes.default.svc.cluster.local A >/dev/null
dig +short +tries=1 +time=30 @"$dns" kubernetes.default.svc.cluster.local AAAA >/dev/null
kill -TERM "$wharf_pid"
wait "$wharf_pid" || true
# Executed functions, by their symbol names (callgrind names a function in
# full the first time, then by number), that the binary defines. Sorted:
# where each goes among them changes nothing mapped, and a list made
# again differs only by what ran. Written whole or not at all.
binary_functions >"$work/defined"
sed -n 's/^c\{0,1\}fn=([0-9]*) \(.*\)$/\1/p' "$work/callgrind.out" | sed "s/'[0-9]*$//" | LC_ALL=C sort -u |
  LC_ALL=C comm -12 "$work/defined" - >"$work/order"
[ -s "$work/order" ] || { echo "callgrind saw no function of the binary run" >&2; exit 1; }
mv "$work/order" crates/wharf/link-order.txt
report_link_order
