#!/usr/bin/env bash
# The main job on one machine: build Mirari, start a local agent, then configure, build and run
# the example app on both backends (unix and kvm), show the live instances and their consoles,
# and stop them. Everything it creates lives in a scratch directory it prints.
set -euo pipefail
cd "$(dirname "$0")"

cargo build --workspace --bins --locked --quiet
bin="$PWD/target/debug"
work="$(mktemp -d /tmp/mirari-demo.XXXXXX)"
export MIRARI_AGENT="unix:$work/agent.sock" MIRARI_STORE="$work/store"
mirari() { "$bin/mirari" "$@"; }

"$bin/mirari-agent" --state-dir "$work/agent" --listen "$MIRARI_AGENT" >"$work/agent.log" 2>&1 &
agent_pid=$!
cleanup() {
  for id in $(mirari ps -o json 2>/dev/null | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p'); do
    mirari stop "$id" >/dev/null 2>&1 || true
  done
  kill "$agent_pid" 2>/dev/null || true
  echo "agent log and state: $work"
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
until mirari host >/dev/null 2>&1; do
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; exit 1; }
  sleep 0.2
done

cd examples/hello
step "the agent's host and backends"; mirari host
step "mirari configure (requirements, file images)"; mirari configure
step "mirari build (each target; artifacts by sha256)"; mirari build
step "mirari run: 2 instances on unix, 1 on kvm"
mirari run -t unix --count 2
mirari run -t kvm
ids=$(mirari ps -o json | sed -n 's/.*"id": "\([0-9a-f]*\)".*/\1/p')
for id in $ids; do
  until mirari console "$id" | grep -q "heartbeat 3"; do sleep 0.5; done
done
step "mirari ps: live instances"; mirari ps
for id in $ids; do
  step "mirari console $id"; mirari console "$id"
done
step "mirari stop (graceful: the unix control socket, the kvm ACPI power button)"
for id in $ids; do mirari stop "$id"; done
step "mirari logs $(echo "$ids" | head -1)"; mirari logs "$(echo "$ids" | head -1)"
