#!/usr/bin/env bash
# Cluster DNS throughput and cost: wharf against Knot DNS, Unbound and
# dnsmasq serving the same zone, all on loopback. Each server gets CPU 0
# and one worker thread; dnsperf gets CPU 1.
# Usage: bench/dns.sh [SERVICES...]   (default: 1000 10000)
# Env: DURATION (s per saturating run, default 10), RATE (qps of the
# fixed-rate run, default 50000), CHURN (endpoint changes per second
# streaming in while wharf and Knot are measured, default 0: none; with
# churn only wharf and Knot run, Knot taking its changes as dynamic
# updates).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
duration=${DURATION:-10}
rate=${RATE:-50000}
churn=${CHURN:-0}
churn_pods=100

need_packages knotd:knot unbound:unbound dnsmasq:dnsmasq dnsperf:dnsperf dig:dnsutils nsupdate:dnsutils
cargo build --release -q -p wharf -p wharf-bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cpu_seconds() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }

# start_churn SERVER: streams $churn endpoint changes a second into SERVER
# (on CPU 1, beside dnsperf) until stop_churn; wharf through the API, Knot
# as dynamic updates of the headless service's A records.
start_churn() {
  [ "$churn" -gt 0 ] || return 0
  local seconds=$((4 * duration + 30))
  if [ "$1" = wharf ]; then
    taskset -c 1 ./target/release/wharf-load churn --pods "$churn_pods" --rate "$churn" --seconds "$seconds" >"$work/churn.out" 2>&1 &
    churner=$!
    until grep -q "churn: started" "$work/churn.out"; do sleep 0.2; done
  else
    taskset -c 1 /usr/bin/python3 - "$churn" "$churn_pods" "$seconds" 2>"$work/churn.out" <<'PY' | taskset -c 1 nsupdate >"$work/nsupdate.out" 2>&1 &
import sys, time
rate, pods, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
present = [True] * pods
start = time.monotonic()
for k in range(rate * seconds):
    time.sleep(max(0.0, start + k / rate - time.monotonic()))
    n = k * 7919 % pods
    present[n] = not present[n]
    verb = "add churn.default.svc.cluster.local. 5 A" if present[n] else "delete churn.default.svc.cluster.local. A"
    print(f"server 127.100.1.1 53\nupdate {verb} 127.161.{n // 250}.{n % 250 + 1}\nsend", flush=True)
    if k % rate == 0:
        print(f"churn: {k} changes in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
PY
    churner=$!
  fi
}
stop_churn() {
  [ "$churn" -gt 0 ] || return 0
  pkill -P "$churner" 2>/dev/null || true
  kill "$churner" 2>/dev/null || true
  wait "$churner" 2>/dev/null || true
}

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
    for ((k = 0; k < churn_pods; k++)); do echo "churn.default.svc A 127.161.$((k / 250)).$((k % 250 + 1))"; done
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
acl:
  - id: churn
    address: 127.0.0.0/8
    action: update
zone:
  - domain: cluster.local
    file: "$work/cluster.local.zone"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    acl: churn
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
  servers=(wharf knot unbound dnsmasq)
  [ "$churn" -eq 0 ] || servers=(wharf knot)
  declare -A address=([wharf]=127.100.0.10 [knot]=127.100.1.1 [unbound]=127.100.2.1 [dnsmasq]=127.100.3.1)
  declare -A pid=([wharf]=$wharf [knot]=$knot [unbound]=$unbound [dnsmasq]=$dnsmasq)
  for s in "${servers[@]}"; do
    start_churn "$s"
    result[$s]=$(measure "$s" "${address[$s]}" "${pid[$s]}")
    stop_churn
    [ "$churn" -eq 0 ] || echo "$s under churn: $(tail -1 "$work/churn.out")"
  done
  read -r wq _ _ wc <<<"${result[wharf]}"
  for s in "${servers[@]}"; do
    read -r q a p c <<<"${result[$s]}"
    printf '%-8s %12.0f %10.3f %16.3f %16.3f %12.2f %12.2f\n' "$s" "$q" "$a" "$p" "$c" "$(echo "$wq $q" | awk '{print $1/$2}')" "$(echo "$c $wc" | awk '{print $1/$2}')"
  done
  echo "(qps_ratio = wharf qps / server qps; cpu_ratio = server CPU / wharf CPU per million queries at $rate qps)"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done
