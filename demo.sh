#!/usr/bin/env bash
# The main job on one machine: build Mirari, start `mirari dev` (a single-node coordinator and a
# local agent in one process; as root also a bridge and the `service` network), deploy the
# example app with 3 instances across the cluster, show the status, an instance answering HTTP
# at its address and a console, scale it, run a kvm instance on the agent directly, and stop
# everything. Everything it creates lives in a scratch directory it prints.
set -euo pipefail
cd "$(dirname "$0")"

cargo build --workspace --bins --locked --quiet
bin="$PWD/target/debug"
work="$(mktemp -d /tmp/mirari-demo.XXXXXX)"
export MIRARI_STORE="$work/store" MIRARI_ADDR="unix:$work/dev/coordinator.sock" MIRARI_AGENT="unix:$work/dev/agent.sock"
mirari() { "$bin/mirari" "$@"; }

"$bin/mirari" dev --dir "$work/dev" >"$work/dev.log" 2>&1 &
dev_pid=$!
cleanup() {
  mirari cluster stop hello >/dev/null 2>&1 || true
  for id in $(mirari ps -o json 2>/dev/null | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p'); do
    mirari stop "$id" >/dev/null 2>&1 || true
  done
  kill -INT "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  echo "logs and state: $work"
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# `mirari dev` says it is ready once its host is up and its network declared.
until grep -q "mirari dev: ready" "$work/dev.log"; do
  kill -0 "$dev_pid" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
  sleep 0.2
done

step "mirari cluster hosts"; mirari cluster hosts
step "mirari cluster deploy -f examples/hello/mirari.toml --count 3 (built on a cluster host)"
mirari cluster deploy -f examples/hello/mirari.toml --count 3
first=$(mirari cluster status -o json | sed -n 's/.*"id": "\([0-9a-f]\{16\}\)".*/\1/p' | head -1)
address=$(mirari cluster status -o json | grep -A1 '"addresses"' | sed -n 's/.*"\([0-9.]*\)\/[0-9]*".*/\1/p' | head -1)
step "curl http://$address/ (the instance's own address, from the service network)"
curl -sS --max-time 5 "http://$address/"
step "curl http://$address/motd.txt"; curl -sS --max-time 5 "http://$address/motd.txt"
until mirari console "$first" | grep -q "heartbeat 3"; do sleep 0.5; done
step "mirari console $first (through the coordinator)"; mirari console "$first"
step "mirari cluster scale hello 5"; mirari cluster scale hello 5
step "the single-host cycle on the same agent: configure, build, run -t kvm"
(cd examples/hello && mirari configure >/dev/null && mirari build -t kvm && mirari run -t kvm)
kvm=$(mirari ps -o json | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p' | tail -1)
until mirari console "$kvm" | grep -q "heartbeat 3"; do sleep 0.5; done
step "mirari console $kvm (a QEMU guest)"; mirari console "$kvm"
step "mirari cluster stop hello"; mirari cluster stop hello
step "mirari stop $kvm"; mirari stop "$kvm"
