#!/usr/bin/env bash
# Benchmark: the registry against etcd, side by side in one run. Both are 3-member clusters on
# loopback with fsync on and mutual TLS, written to by the same load generator (`mirari-bench
# raft`, one tonic/rustls client per concurrent writer, each write ~100 bytes). Each round
# starts both afresh and measures, interleaved:
#   - committed writes per second and p50/p99 latency at 1, 16 and 256 concurrent clients;
#   - failover: 16 clients write while the leader is killed (-9); the longest time in which no
#     write was acknowledged.
# Prints min/median/max over the rounds and Mirari's ratio to etcd (medians; for latencies
# and failover, below 1 is better for Mirari).
#   deploy/bench-raft.sh [SECONDS_PER_RUN] [ROUNDS]      (defaults 10 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
rounds="${2:-3}"
source deploy/lib/coordinators.sh
source deploy/lib/etcd.sh
results="$work/results"
: >"$results"

# load STORE ADDRESSES CLIENTS SECONDS PREFIX: one run's JSON report.
load() {
  "$bin/mirari-bench" "${bench_tls[@]}" raft --store "$1" --coordinators "$2" --clients "$3" --duration "${4}s" \
    --prefix "$5" --json
}
# record STORE FIGURE VALUE
record() { echo "$1 $2 $3" >>"$results"; }
field() { sed -E "s/.*\"$1\":([0-9.e+-]+).*/\1/"; }

# measure STORE ADDRESSES LEADER_INDEX_FN PIDS_ARRAY
measure() {
  local store="$1" addresses="$2" clients report leader pid
  for clients in 1 16 256; do
    report="$(load "$store" "$addresses" "$clients" "$seconds" "r$round-c$clients")"
    record "$store" "writes/s,$clients" "$(field writes_per_second <<<"$report")"
    record "$store" "p99_ms,$clients" "$(field p99_ms <<<"$report")"
    echo "  $store, $clients clients: $report"
  done
  # Failover: the leader is killed 2 s into a 6 s run of 16 clients.
  until leader="$("$3")"; do sleep 0.1; done
  local -n members="$4"
  pid="${members[$leader]}"
  load "$store" "$addresses" 16 6 "r$round-failover" >"$work/failover.json" &
  local writer=$!
  sleep 2
  kill -9 "$pid"
  wait "$writer"
  wait "$pid" 2>/dev/null || true
  report="$(cat "$work/failover.json")"
  record "$store" "failover_ms" "$(field longest_gap_ms <<<"$report")"
  echo "  $store, leader (member $((leader + 1))) killed: $report"
}

echo "3 members each on loopback (fsync on, mutual TLS), ${seconds}s per run, $rounds rounds; etcd $etcd_version"
for round in $(seq "$rounds"); do
  echo "round $round:"
  start_coordinators
  measure mirari "$all" leader_index coordinator_pids
  stop_coordinators
  start_etcd
  measure etcd "$etcd_all" etcd_leader_index etcd_pids
  stop_etcd
done

# min/median/max of each figure for each store, and the ratio of the medians.
stats() { grep "^$1 $2 " "$results" | awk '{ print $3 }' | sort -g | awk '{ v[NR] = $1 } END { printf "%s %s %s", v[1], v[int((NR + 1) / 2)], v[NR] }'; }
echo
printf '%-22s %-28s %-28s %s\n' figure "mirari min/median/max" "etcd min/median/max" "ratio (median)"
for figure in writes/s,1 writes/s,16 writes/s,256 p99_ms,1 p99_ms,16 p99_ms,256 failover_ms; do
  read -r mmin mmed mmax <<<"$(stats mirari "$figure")"
  read -r emin emed emax <<<"$(stats etcd "$figure")"
  awk -v f="$figure" -v a="$mmin" -v b="$mmed" -v c="$mmax" -v d="$emin" -v e="$emed" -v g="$emax" \
    'BEGIN { printf "%-22s %8.1f %8.1f %8.1f   %8.1f %8.1f %8.1f   %.2f\n", f, a, b, c, d, e, g, b / e }'
done
