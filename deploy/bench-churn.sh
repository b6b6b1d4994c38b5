#!/usr/bin/env bash
# Benchmark: coordinator memory under churn. A real 3-coordinator cluster (loopback, fsync on)
# runs INSTANCES instances on simulated hosts; each instance is stopped as soon as its host
# reports it running, and the scheduler replaces it, until LIFETIMES instances have ended. Every
# EVERY lifetimes it prints each coordinator's resident memory: the memory curve. The anchor is
# the same cluster as the churn began: the last figure over the first after it (flat is 1.00),
# and the coordinator's memory per live instance at the end.
#   deploy/bench-churn.sh [LIFETIMES] [INSTANCES] [HOSTS] [EVERY]
#                         (defaults 1000000, 10000, 1000, 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
lifetimes="${1:-1000000}"
instances="${2:-10000}"
hosts="${3:-1000}"
every="${4:-100000}"
source deploy/lib/coordinators.sh
start_coordinators
read -r -a empty <<<"$(coordinator_rss)"

echo "3 coordinators on loopback (fsync on), $hosts simulated hosts, $instances instances, $lifetimes lifetimes:"
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k/1024 }'; }
ended=0 started=() first=() last=()
while IFS= read -r line; do
  case "$line" in
    lifetimes*)
      read -r -a rss <<<"$(coordinator_rss)"
      echo "$line; RSS MiB $(mib "${rss[0]}") / $(mib "${rss[1]}") / $(mib "${rss[2]}")"
      ended="$(awk '{ print $2 }' <<<"$line")"
      [ "$ended" = 0 ] && started=("${rss[@]}")
      [ "$ended" = "$every" ] && first=("${rss[@]}")
      last=("${rss[@]}")
      ;;
    *) echo "$line" ;;
  esac
done < <("$bin/mirari-bench" "${bench_tls[@]}" churn --coordinators "$all" --hosts "$hosts" \
  --instances "$instances" --lifetimes "$lifetimes" --every "$every")
[ "$ended" -ge "$lifetimes" ] || { echo "the churn stopped after $ended lifetimes"; exit 1; }
for i in 0 1 2; do
  awk -v id=$((i + 1)) -v e="${empty[$i]}" -v s="${started[$i]}" -v f="${first[$i]:-${started[$i]}}" -v l="${last[$i]}" \
    -v n="$instances" -v every="$every" \
    'BEGIN { printf "coordinator %d: RSS %.0f MiB as the churn began, %.0f MiB after the first %s, %.0f MiB at the end: %.2fx the first; %.0f bytes per live instance\n",
      id, s/1024, f/1024, every, l/1024, l/f, (l-e)*1024/n }'
done
