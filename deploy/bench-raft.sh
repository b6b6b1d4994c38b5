#!/usr/bin/env bash
# Benchmark: committed writes per second and p50/p99 latency through a 3-coordinator raft
# group on this machine (loopback, fsync on), at 1, 16 and 256 concurrent clients.
#   deploy/bench-raft.sh [SECONDS_PER_RUN]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
source deploy/lib/coordinators.sh
echo "3 coordinators on loopback, data in $work (fsync on), ${seconds}s per run:"
for clients in 1 16 256; do
  "$bin/mirari-bench" "${bench_tls[@]}" raft --coordinators "$all" --clients "$clients" --duration "${seconds}s" --prefix "c$clients"
done
