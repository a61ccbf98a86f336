# Shared by the benchmark scripts: source it after `cd` to the repository.

# need_packages COMMAND:PACKAGE...: installs the Debian packages whose
# command is missing.
need_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; fi
}

# report_link_order: how much of crates/wharf/link-order.txt the release
# binary defines. docs/BENCHMARKS.md's memory figures were measured with
# every listed function found; a list that a large change left behind
# places less and maps more code (bench/link-order.sh writes it anew).
report_link_order() {
  local found
  found=$(binary_functions | LC_ALL=C comm -12 - <(LC_ALL=C sort -u crates/wharf/link-order.txt) | wc -l)
  echo "link order: $found of $(wc -l <crates/wharf/link-order.txt) listed functions in the binary"
}

# binary_functions: the symbol names of the functions the release binary
# defines, sorted as `comm` wants them.
binary_functions() {
  nm --defined-only ./target/release/wharf | awk '$2 ~ /^[tTwW]$/ {print $3}' | LC_ALL=C sort -u
}

# start_wharf_up DIR [FLAGS...]: starts `wharf up` (release) in DIR on a free
# API port, waits until it is up, exports KUBECONFIG, sets $wharf_pid.
# WHARF_WRAP, when set, is the command that runs it (e.g. valgrind and its
# options, split at spaces).
start_wharf_up() {
  local dir=$1
  shift
  # shellcheck disable=SC2086 # the wrapper's words, split on purpose
  ${WHARF_WRAP:-} ./target/release/wharf up --data-dir "$dir/data" --api-listen 127.0.0.1:0 --node-name bench \
    --metrics-listen 127.0.0.1:0 "$@" >"$dir/wharf.out" 2>&1 &
  wharf_pid=$!
  until grep -q "kubectl get services" "$dir/wharf.out" 2>/dev/null; do
    kill -0 "$wharf_pid" 2>/dev/null || { echo "wharf up did not start:" >&2; head -3 "$dir/wharf.out" >&2; return 1; }
    sleep 0.1
  done
  export KUBECONFIG="$dir/data/admin.kubeconfig" KUBECACHEDIR="$dir/cache"
}
