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
cargo build --release --locked --quiet -p mirari-coordinator -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench-cluster.XXXXXX")"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
base=$((17000 + RANDOM % 20000))
addresses=()
for id in 1 2 3; do
  address="127.0.0.1:$((base + id))"
  addresses+=("$address")
  flag=""; [ "$id" = 1 ] && flag="--bootstrap"
  RUST_LOG="${RUST_LOG:-warn}" "$bin/mirari-coordinator" --id "$id" --data-dir "$work/n$id" --listen "$address" $flag 2>"$work/n$id.log" &
  pids+=($!)
done
export MIRARI_ADDR="${addresses[0]}"
until "$bin/mirari" cluster info -o json 2>/dev/null | grep -q '"role": "leader"'; do sleep 0.2; done
for id in 2 3; do
  until "$bin/mirari" cluster members add --id "$id" --address "${addresses[$((id - 1))]}" >/dev/null 2>&1; do sleep 0.2; done
done
all="$(IFS=,; echo "${addresses[*]}")"
export MIRARI_ADDR="$all"
before=(); for pid in "${pids[@]}"; do before+=("$(rss_kib "$pid")"); done

echo "3 coordinators on loopback (fsync on), $hosts simulated hosts, $instances instances:"
"$bin/mirari-bench" cluster --coordinators "$all" --hosts "$hosts" --instances "$instances"
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
