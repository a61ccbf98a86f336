#!/usr/bin/env bash
# Time from a change through one API server to every agent's DNS answer
# and proxy listener, with 1,000 services, on a cluster built from network
# namespaces (198.18.0.0/15 only): etcd, two servers, three agents.
# Usage: bench/multinode.sh [SERVICES] [CHANGES]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
services=${1:-1000}
changes=${2:-20}
need_packages etcd:etcd-server protoc:protobuf-compiler
cargo build --release -q -p wharf -p wharf-bench
wharf=$PWD/target/release/wharf
load=$PWD/target/release/wharf-load

work=$(mktemp -d)
p="whb$$"
namespaces=()
pids=()
# A background `in_ns` is a subshell whose pid is not the program's, so
# everything still running in the namespaces is stopped by namespace.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ns in "${namespaces[@]}"; do ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
  wait 2>/dev/null || true
  for ns in "${namespaces[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

netns() { ip netns add "$p-$1"; ip -n "$p-$1" link set lo up; namespaces+=("$p-$1"); }
netns sw
ip -n "$p-sw" link add br0 type bridge && ip -n "$p-sw" link set br0 up
host() { # name ip
  netns "$1"
  ip link add eth0 netns "$p-$1" type veth peer name "p-$1" netns "$p-sw"
  ip -n "$p-sw" link set "p-$1" master br0 && ip -n "$p-sw" link set "p-$1" up
  ip -n "$p-$1" addr add "$2/24" dev eth0 && ip -n "$p-$1" link set eth0 up
}
ctrl=198.18.200.2
host ctrl $ctrl
for i in 0 1 2; do host "n$i" "198.18.200.1$i"; done
in_ns() { ns=$1; shift; ip netns exec "$p-$ns" "$@"; }

in_ns ctrl etcd --name e --data-dir "$work/etcd" --listen-client-urls http://$ctrl:2379 --advertise-client-urls http://$ctrl:2379 \
  --listen-peer-urls http://$ctrl:2380 --initial-advertise-peer-urls http://$ctrl:2380 --initial-cluster e=http://$ctrl:2380 >"$work/etcd.log" 2>&1 &
pids+=($!)
until grep -q "ready to serve client requests" "$work/etcd.log"; do sleep 0.2; done
server() { # index
  in_ns ctrl "$wharf" server --store etcd --etcd-endpoints http://$ctrl:2379 --data-dir "$work/s$1" --api-listen "$ctrl:$((6442 + $1))" \
    >"$work/s$1.log" 2>&1 &
  pids+=($!)
  until grep -q "wharf server is up" "$work/s$1.log" 2>/dev/null; do sleep 0.2; done
}
server 1
mkdir -p "$work/s2/pki" && cp "$work/s1/pki/"{ca.crt,ca.key,admin.token} "$work/s2/pki/" && cp "$work/s1/encryption-config.yaml" "$work/s2/"
server 2
export KUBECONFIG="$work/s1/admin.kubeconfig"
token=$(in_ns ctrl "$wharf" token create --kubeconfig "$KUBECONFIG")
for i in 0 1 2; do
  in_ns "n$i" "$wharf" agent --join "$ctrl:6443,$ctrl:6444" --token "$token" --ca-cert "$work/s1/pki/ca.crt" \
    --data-dir "$work/a$i" --node-name "node-$i" \
    --node-ip "198.18.200.1$i" --dns-upstream none --metrics-listen 127.0.0.1:0 >"$work/a$i.log" 2>&1 &
  pids+=($!)
done
until [ "$(in_ns ctrl kubectl get nodes --no-headers 2>/dev/null | grep -c ' Ready ')" = 3 ]; do sleep 0.5; done
in_ns ctrl "$load" services "$services"
for i in 0 1 2; do
  in_ns "n$i" "$load" wait-service --dns 127.96.0.10:53 --name "svc-$((services - 1)).default.svc.cluster.local" >/dev/null
done
echo "cluster up: 3 nodes, $services services"

: >"$work/samples"
for k in $(seq "$changes"); do
  waiters=()
  for i in 0 1 2; do
    in_ns "n$i" "$load" wait-service --dns 127.96.0.10:53 --name "probe-$k.default.svc.cluster.local" >"$work/w$i" &
    waiters+=($!)
  done
  sleep 0.2
  sent=$(in_ns ctrl "$load" create-service "probe-$k")
  wait "${waiters[@]}"
  for i in 0 1 2; do read -r dns listen <"$work/w$i"; echo "$(( (dns - sent) / 1000 )) $(( (listen - sent) / 1000 ))" >>"$work/samples"; done
done
report() { sort -n | awk -v what="$1" '{a[NR]=$1} END {printf "%-32s median %6.1f ms  p90 %6.1f ms  max %6.1f ms  (%d samples)\n", what, a[int((NR+1)/2)]/1000, a[int(NR*0.9)]/1000, a[NR]/1000, NR}'; }
cut -d' ' -f1 "$work/samples" | report "change -> every node's DNS:"
cut -d' ' -f2 "$work/samples" | report "change -> every node's proxy:"
