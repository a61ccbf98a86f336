#!/usr/bin/env bash
# Cluster DNS throughput and cost: wharf against Knot DNS, Unbound and
# dnsmasq serving the same zone, all on loopback. Each server gets CPU 0
# and one worker thread; dnsperf gets CPU 1.
# Usage: bench/dns.sh [SERVICES...]   (default: 1000 10000)
# Env: DURATION (s per saturating run, default 10), RATE (qps of the
# fixed-rate run, default 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
duration=${DURATION:-10}
rate=${RATE:-50000}

need_packages knotd:knot unbound:unbound dnsmasq:dnsmasq dnsperf:dnsperf dig:dnsutils
cargo build --release -q -p wharf -p wharf-bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cpu_seconds() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

# measure NAME IP PID: prints "qps avg_ms p99_ms cpu_s_per_million"
measure() {
  local ip=$2 pid=$3 qps avg p99 c0 c1 done
  until dig +short +time=1 +tries=1 "@$ip" "svc-$((n - 1)).default.svc.cluster.local" | grep -q .; do sleep 0.2; done
  read -r qps avg < <(taskset -c 1 dnsperf -s "$ip" -d "$work/queries" -l "$duration" -c 32 -q 300 2>&1 |
    awk '/Queries per second/ {q=$4} /Average Latency/ {a=$4*1000} END {print q, a}')
  c0=$(cpu_seconds "$pid")
  taskset -c 1 dnsperf -s "$ip" -d "$work/queries" -l "$duration" -Q "$rate" -v >"$work/latency" 2>&1
  c1=$(cpu_seconds "$pid")
  done=$(grep -c '^> ' "$work/latency")
  p99=$(awk '/^> / {print $NF}' "$work/latency" | sort -n | awk '{a[NR]=$1} END {print a[int(NR*0.99)]*1000}')
  echo "$qps $avg $p99 $(echo "$c0 $c1 $done" | awk '{printf "%.3f", ($2-$1)/$3*1e6}')"
}

for n in "${sizes[@]}"; do
  echo "== $n services, query mix 60% A, 20% SRV, 20% NXDOMAIN =="
  rm -rf "${work:?}"/*
  # wharf: the real thing, fed through the API.
  taskset -c 0 ./target/release/wharf up --data-dir "$work/wharf" --api-listen 127.0.0.1:0 --node-name bench \
    --service-cidr 127.100.0.0/16 --dns-workers 1 --dns-upstream none --metrics-listen 127.0.0.1:0 >"$work/wharf.out" 2>&1 &
  wharf=$!; pids+=("$wharf")
  until grep -q "kubectl get services" "$work/wharf.out" 2>/dev/null; do sleep 0.1; done
  export KUBECONFIG="$work/wharf/admin.kubeconfig"
  ./target/release/wharf-load services "$n" >/dev/null
  kubectl get svc -o jsonpath='{range .items[*]}{.metadata.name} {.spec.clusterIP}{"\n"}{end}' | grep '^svc-' >"$work/ips"

  # The same zone for the peers.
  {
    printf '$ORIGIN cluster.local.\n$TTL 5\n@ SOA ns.dns hostmaster 1 7200 1800 86400 5\n@ NS ns.dns\nns.dns A 127.100.0.10\n'
    awk '{print $1 ".default.svc A " $2; print "_http._tcp." $1 ".default.svc SRV 0 100 80 " $1 ".default.svc.cluster.local."}' "$work/ips"
  } >"$work/cluster.local.zone"
  awk -v n="$n" 'BEGIN {srand(7); for (k = 0; k < 100000; k++) { i = int(rand() * n); r = rand();
      if (r < 0.6) print "svc-" i ".default.svc.cluster.local A";
      else if (r < 0.8) print "_http._tcp.svc-" i ".default.svc.cluster.local SRV";
      else print "nope-" i ".default.svc.cluster.local A" } }' >"$work/queries"

  mkdir -p "$work/knot"
  cat >"$work/knot.conf" <<KNOT
server:
    rundir: "$work/knot"
    listen: 127.100.1.1@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$work/knot"
log:
  - target: stderr
    any: error
zone:
  - domain: cluster.local
    file: "$work/cluster.local.zone"
    zonefile-load: whole
    journal-content: none
KNOT
  taskset -c 0 knotd -c "$work/knot.conf" >"$work/knot.log" 2>&1 &
  knot=$!; pids+=("$knot")

  {
    printf 'server:\n  interface: 127.100.2.1\n  port: 53\n  num-threads: 1\n  do-daemonize: no\n  chroot: ""\n  username: ""\n'
    printf '  directory: "%s"\n  pidfile: ""\n  use-syslog: no\n  logfile: ""\n  access-control: 127.0.0.0/8 allow\n  local-zone: "cluster.local." static\n' "$work"
    awk '{print "  local-data: \"" $1 ".default.svc.cluster.local. 5 IN A " $2 "\""; print "  local-data: \"_http._tcp." $1 ".default.svc.cluster.local. 5 IN SRV 0 100 80 " $1 ".default.svc.cluster.local.\""}' "$work/ips"
  } >"$work/unbound.conf"
  taskset -c 0 unbound -d -c "$work/unbound.conf" >"$work/unbound.log" 2>&1 &
  unbound=$!; pids+=("$unbound")

  {
    printf 'no-resolv\nno-hosts\nlocal=/cluster.local/\n'
    awk '{print "host-record=" $1 ".default.svc.cluster.local," $2; print "srv-host=_http._tcp." $1 ".default.svc.cluster.local," $1 ".default.svc.cluster.local,80,0,100"}' "$work/ips"
  } >"$work/dnsmasq.conf"
  taskset -c 0 dnsmasq --keep-in-foreground --conf-file="$work/dnsmasq.conf" --listen-address=127.100.3.1 --bind-interfaces \
    --port=53 --user=root --pid-file= --log-facility=- >"$work/dnsmasq.log" 2>&1 &
  dnsmasq=$!; pids+=("$dnsmasq")

  printf '%-8s %12s %10s %16s %16s %12s %12s\n' server qps avg_ms p99_ms_at_rate cpu_s_per_1M qps_ratio cpu_ratio
  declare -A result=()
  for entry in "wharf 127.100.0.10 $wharf" "knot 127.100.1.1 $knot" "unbound 127.100.2.1 $unbound" "dnsmasq 127.100.3.1 $dnsmasq"; do
    set -- $entry
    result[$1]=$(measure "$1" "$2" "$3")
  done
  read -r wq _ _ wc <<<"${result[wharf]}"
  for s in wharf knot unbound dnsmasq; do
    read -r q a p c <<<"${result[$s]}"
    printf '%-8s %12.0f %10.3f %16.3f %16.3f %12.2f %12.2f\n' "$s" "$q" "$a" "$p" "$c" "$(echo "$wq $q" | awk '{print $1/$2}')" "$(echo "$c $wc" | awk '{print $1/$2}')"
  done
  echo "(qps_ratio = wharf qps / server qps; cpu_ratio = server CPU / wharf CPU per million queries at $rate qps)"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
