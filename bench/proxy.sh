#!/usr/bin/env bash
# The service proxy against HAProxy (TCP mode) and nginx's stream module,
# all on loopback, each with the same number of worker threads, and
# wharf's nftables mode (kernel DNAT, no proxy process in the path):
# wrk keep-alive and Connection: close, iperf3 throughput, and the p99
# added over direct at a fixed rate (half of HAProxy's keep-alive rate).
# The proxies run on CPU 1; backend, wrk and iperf3 on CPU 0.
# Loopback numbers on a shared VM swing by ±15% between runs, so every
# measurement is taken ROUNDS times, the proxies in rotating order, and
# the median is reported.
# Usage: bench/proxy.sh   Env: WORKERS (default 1), DURATION (s, default 10), ROUNDS (default 3),
#        RATE (req/s of the fixed-rate latency run; default half of HAProxy's keep-alive rate)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
workers=${WORKERS:-1}
duration=${DURATION:-10}
rounds=${ROUNDS:-3}

need_packages haproxy:haproxy nginx:nginx wrk:wrk iperf3:iperf3 nft:nftables conntrack:conntrack
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || { apt-get update -qq && apt-get install -y -qq libnginx-mod-stream >/dev/null; }
cargo build --release -q -p wharf -p wharf-bench

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The backend: nginx answering 200 "ok", and an iperf3 server.
cat >"$work/backend.conf" <<CONF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.err;
events { worker_connections 20000; }
http { access_log off; server { listen 127.0.0.1:18080 reuseport backlog=4096; keepalive_requests 1000000; location / { return 200 "ok\n"; } } }
CONF
taskset -c 0 nginx -p "$work" -c "$work/backend.conf" -g 'daemon off;' & pids+=($!)
taskset -c 0 iperf3 -s -B 127.0.0.1 -p 15201 >/dev/null 2>&1 & pids+=($!)

cat >"$work/haproxy.cfg" <<CONF
global
    nbthread $workers
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen web
    bind 127.0.0.2:18080
    server backend 127.0.0.1:18080
listen iperf
    bind 127.0.0.2:15201
    server backend 127.0.0.1:15201
CONF
taskset -c 1 haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & pids+=($!)

cat >"$work/stream.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $workers;
pid $work/stream.pid;
error_log $work/stream.err;
events { worker_connections 20000; }
stream {
    server { listen 127.0.0.3:18080 backlog=4096; proxy_pass 127.0.0.1:18080; }
    server { listen 127.0.0.3:15201; proxy_pass 127.0.0.1:15201; }
}
CONF
taskset -c 1 nginx -p "$work" -c "$work/stream.conf" -g 'daemon off;' & pids+=($!)

# wharf, in userspace mode and in nftables mode (its own `ip wharf`
# table): services without selectors and hand-written EndpointSlices.
start_wharf() { # NAME CIDR_OCTET MODE
  taskset -c 1 ./target/release/wharf up --data-dir "$work/$1" --api-listen 127.0.0.1:0 --node-name "bench-$1" \
    --service-cidr "127.$2.0.0/16" --node-ip "127.254.$2.1" --lb-pool "127.253.$2.0/24" --dns-workers 1 \
    --proxy-workers "$workers" --proxy-mode "$3" --dns-upstream none --metrics-listen 127.0.0.1:0 >"$work/$1.out" 2>&1 &
  pids+=($!)
  until grep -q "kubectl get services" "$work/$1.out" 2>/dev/null; do sleep 0.1; done
  for svc in "web 18080 80" "iperf 15201 5201"; do
    set -- "$1" "$2" $svc
    KUBECONFIG="$work/$1/admin.kubeconfig" kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: $3}
spec:
  clusterIP: 127.$2.0.$(( $4 == 18080 ? 80 : 81 ))
  ports: [{name: p, port: $5}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $3, labels: {kubernetes.io/service-name: $3}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
ports: [{name: p, port: $4, protocol: TCP}]
YAML
  done
  until curl -s -o /dev/null "http://127.$2.0.80:80/"; do sleep 0.2; done
}
start_wharf wharf 101 userspace
start_wharf nft 102 nftables

declare -A web=([direct]=127.0.0.1:18080 [haproxy]=127.0.0.2:18080 [nginx]=127.0.0.3:18080 [wharf]=127.101.0.80:80 [nft]=127.102.0.80:80)
declare -A perf=([direct]="127.0.0.1 15201" [haproxy]="127.0.0.2 15201" [nginx]="127.0.0.3 15201" [wharf]="127.101.0.81 5201" [nft]="127.102.0.81 5201")
order=(direct haproxy nginx wharf nft)

# wrk: requests/s, p50 and p99 in µs.
run_wrk() {
  taskset -c 0 wrk -t1 -c50 -d"${duration}s" --latency "$@" 2>&1 | awk '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return v*1000; if (v ~ /s$/) return v*1e6; return v }
    /Requests\/sec/ {r=$2} $1=="50%" {p50=us($2)} $1=="99%" {p99=us($2)} END {printf "%.0f %.0f %.0f", r, p50, p99}'
}

median() { sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
iperf_gbit() {
  taskset -c 0 iperf3 -c "$1" -p "$2" -t "$duration" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

declare -A keep close gbit lat samples
for round in $(seq "$rounds"); do
  shift_by=$((round % ${#order[@]}))
  rotated=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  for s in "${rotated[@]}"; do
    # With wharf's nat table loaded, conntrack follows every row's
    # connections, and the same client reuses local ports faster than
    # TIME_WAIT entries expire (120 s). A DNATed connection whose tuple
    # meets another row's stale entry (or a direct one meeting a DNATed
    # one's) has its SYN retried a second later. Real clients come from
    # many addresses, so every row starts from an empty table.
    conntrack -F >/dev/null 2>&1 || true
    samples[$s.keep]+="$(run_wrk "http://${web[$s]}/")"$'\n'
    samples[$s.close]+="$(run_wrk -H "Connection: close" "http://${web[$s]}/")"$'\n'
    samples[$s.gbit]+="$(iperf_gbit ${perf[$s]})"$'\n'
  done
done
# The median round by requests/s, with that round's latencies.
for s in "${order[@]}"; do
  keep[$s]=$(printf '%s' "${samples[$s.keep]}" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
  close[$s]=$(printf '%s' "${samples[$s.close]}" | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')
  gbit[$s]=$(printf '%s' "${samples[$s.gbit]}" | median)
done
rate=${RATE:-$(( ${keep[haproxy]%% *} / 2 ))}
for round in $(seq "$rounds"); do
  for s in "${order[@]}"; do
    samples[$s.lat]+="$(taskset -c 0 ./target/release/wharf-load http-latency "${web[$s]}" --rate "$rate" --seconds "$duration" --connections 32 | awk '{print $8, $6}')"$'\n'
  done
done
for s in "${order[@]}"; do
  # Median by p99; printed as "p50 p99".
  lat[$s]=$(printf '%s' "${samples[$s.lat]}" | sort -n | awk '{a[NR]=$2 " " $1} END {print a[int((NR+1)/2)]}')
done

echo "workers per proxy: $workers; medians of $rounds rounds of ${duration}s; fixed-rate latency at $rate req/s"
printf '%-8s %12s %8s %8s %12s %8s %8s %8s %14s %14s\n' proxy keepalive_rps p50_us p99_us close_rps p50_us p99_us Gbit/s fixed_p50_us fixed_p99_us
for s in "${order[@]}"; do
  read -r kr kp50 kp99 <<<"${keep[$s]}"; read -r cr cp50 cp99 <<<"${close[$s]}"; read -r fp50 fp99 <<<"${lat[$s]}"
  printf '%-8s %12s %8s %8s %12s %8s %8s %8s %14s %14s\n' "$s" "$kr" "$kp50" "$kp99" "$cr" "$cp50" "$cp99" "${gbit[$s]}" "$fp50" "$fp99"
done
echo
echo "wharf / peer (above 1: wharf ahead; for added p99 the peer's added p99 / wharf's):"
read -r dkr _ <<<"${keep[direct]}"; read -r _ dp99 <<<"${lat[direct]}"
read -r wkr _ <<<"${keep[wharf]}"; read -r wcr _ <<<"${close[wharf]}"; read -r _ wp99 <<<"${lat[wharf]}"
for s in haproxy nginx; do
  read -r kr _ <<<"${keep[$s]}"; read -r cr _ <<<"${close[$s]}"; read -r _ p99 <<<"${lat[$s]}"
  echo "$s $wkr $kr $wcr $cr ${gbit[wharf]} ${gbit[$s]} $p99 $wp99 $dp99" | awk '{
    added_peer = $8 - $10; added_wharf = $9 - $10; if (added_wharf < 1) added_wharf = 1
    printf "  vs %-8s keep-alive %.2f  close %.2f  Gbit/s %.2f  added p99 %.2f\n", $1, $2/$3, $4/$5, $6/$7, added_peer/added_wharf }'
done
echo "added p99 over direct at the fixed rate: wharf $(( wp99 - dp99 )) µs"
read -r nkr _ <<<"${keep[nft]}"; read -r ncr _ <<<"${close[nft]}"; read -r _ np99 <<<"${lat[nft]}"
read -r dcr _ <<<"${close[direct]}"; read -r hkr _ <<<"${keep[haproxy]}"
echo "$nkr $dkr $ncr $dcr ${gbit[nft]} ${gbit[direct]} ${gbit[haproxy]} $np99 $dp99" | awk '{
  printf "nftables / direct: keep-alive %.2f  close %.2f  Gbit/s %.2f  (Gbit/s vs HAProxy %.2f); added p99 %d µs\n", $1/$2, $3/$4, $5/$6, $5/$7, $8-$9 }'
