#!/usr/bin/env bash
# Benchmark: a real 3-coordinator cluster (loopback, fsync on) with many simulated hosts.
# Prints placements committed per second until INSTANCES instances are placed and acknowledged
# as running, each coordinator's memory per instance, and how long `mirari cluster status` takes
# at that size: its default summary, a page of 1,000 instances, and everything as JSON.
#   deploy/bench-cluster.sh [INSTANCES] [HOSTS]      (defaults 100000 and 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
instances="${1:-100000}"
hosts="${2:-1000}"
source deploy/lib/coordinators.sh
start_coordinators
export MIRARI_ADDR="$all"
read -r -a before <<<"$(coordinator_rss)"

echo "3 coordinators on loopback (fsync on), $hosts simulated hosts, $instances instances:"
# The simulated hosts stay up (--hold) while the cluster is measured at full size.
"$bin/mirari-bench" "${bench_tls[@]}" cluster --coordinators "$all" --hosts "$hosts" --instances "$instances" \
  --hold 1h >"$work/bench.out" &
pids+=($!)
until grep -q "acknowledged as running" "$work/bench.out"; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/bench.out"; exit 1; }
  sleep 0.5
done
cat "$work/bench.out"
read -r -a after <<<"$(coordinator_rss)"
for i in 0 1 2; do
  awk -v id=$((i + 1)) -v b="${before[$i]}" -v a="${after[$i]}" -v n="$instances" \
    'BEGIN { printf "coordinator %d: RSS %.0f MiB -> %.0f MiB, %.0f bytes per instance\n", id, b/1024, a/1024, (a-b)*1024/n }'
done
# The default view (the summary), a page of the instance list, and everything.
time_status() {
  local label="$1"; shift
  for run in 1 2 3; do
    start=$(date +%s.%N)
    "$bin/mirari" cluster status "$@" > "$work/status.out"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v l="$label" -v r="$run" -v size="$(stat -c %s "$work/status.out")" \
      'BEGIN { printf "mirari cluster status %s run %d: %.3f s, %.2f MB\n", l, r, e-s, size/1e6 }'
  done
}
time_status "(summary)"
time_status "--instances --limit 1000" --instances --limit 1000
time_status "--output json (linearizable)" --output json
time_status "--output json --stale" --output json --stale
