#!/usr/bin/env bash
# The README's start command, exactly as written: the first line of its
# first ```sh block. Runs it (with a private HOME, so ~/.wharf is this
# test's), waits until wharf is up, checks kubectl against it, stops it
# with SIGTERM and checks that it exits cleanly. Run by scripts/test.sh
# after the cargo tests (which hold cargo's build lock while they run).
set -euo pipefail
cd "$(dirname "$0")/.."

command=$(awk '/^```sh$/ {inside = 1; next} inside {print; exit}' README.md | sed 's/[[:space:]]*#.*$//')
[ -n "$command" ] || { echo "readme-test: no start command in README.md" >&2; exit 1; }
echo "readme-test: running: $command"

# A private HOME for ~/.wharf; cargo and rustup keep their own homes.
export RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
home=$(mktemp -d)
log="$home/out.log"
# Its own process group, so that cargo and wharf are stopped together.
HOME="$home" setsid bash -c "exec $command" >"$log" 2>&1 &
group=$!
stop() { kill -TERM -- "-$group" 2>/dev/null || true; }
trap 'stop; rm -rf "$home"' EXIT

for _ in $(seq 1 1200); do
  grep -q "kubectl get services" "$log" && break
  kill -0 "$group" 2>/dev/null || { cat "$log" >&2; echo "readme-test: the command exited" >&2; exit 1; }
  sleep 0.5
done
grep -q "kubectl get services" "$log" || { tail -50 "$log" >&2; echo "readme-test: wharf did not come up" >&2; exit 1; }

# The banner's own instructions: export KUBECONFIG, kubectl get services.
kubeconfig=$(awk '/export KUBECONFIG=/ {sub(/.*export KUBECONFIG=/, ""); print; exit}' "$log")
out=$(KUBECONFIG="$kubeconfig" KUBECACHEDIR="$home/cache" kubectl get services --all-namespaces)
echo "$out"
grep -q "kubernetes" <<<"$out" && grep -q "kube-dns" <<<"$out" || { echo "readme-test: kubectl did not list the built-in services" >&2; exit 1; }

stop
for _ in $(seq 1 60); do
  kill -0 "$group" 2>/dev/null || break
  sleep 0.5
done
if kill -0 "$group" 2>/dev/null; then echo "readme-test: wharf did not stop on SIGTERM" >&2; exit 1; fi
wait "$group" 2>/dev/null || true
grep -q "stopped" "$log" || { tail -20 "$log" >&2; echo "readme-test: wharf did not shut down cleanly" >&2; exit 1; }
echo "readme-test: ok"
