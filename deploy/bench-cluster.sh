#!/usr/bin/env bash
# Benchmark: a real 3-coordinator cluster (loopback, fsync on) with many simulated hosts.
# Prints placements committed per second until INSTANCES instances are placed and acknowledged
# as running, each coordinator's memory per instance, and how long `mirari cluster status
# --output json` takes at that size.
#   deploy/bench-cluster.sh [INSTANCES] [HOSTS]      (defaults 100000 and 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
instances="${1:-100000}"
hosts="${2:-1000}"
source deploy/lib/coordinators.sh
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
export MIRARI_ADDR="$all"
before=(); for pid in "${pids[@]}"; do before+=("$(rss_kib "$pid")"); done

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
for i in 0 1 2; do
  after="$(rss_kib "${pids[$i]}")"
  awk -v id=$((i + 1)) -v b="${before[$i]}" -v a="$after" -v n="$instances" \
    'BEGIN { printf "coordinator %d: RSS %.0f MiB -> %.0f MiB, %.0f bytes per instance\n", id, b/1024, a/1024, (a-b)*1024/n }'
done
for mode in "" "--stale"; do
  for run in 1 2 3; do
    start=$(date +%s.%N)
    "$bin/mirari" cluster status --output json $mode > "$work/status.json"
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v m="${mode:-linearizable}" -v r="$run" -v size="$(stat -c %s "$work/status.json")" \
      'BEGIN { printf "mirari cluster status --output json (%s) run %d: %.2f s, %.1f MB\n", m, r, e-s, size/1e6 }'
  done
done
