#!/usr/bin/env bash
# Benchmark: many instances started at once, and a deploy whose build is cached, each beside
# its anchor in the same run, rounds interleaved:
# - KVM kvm guests on one agent (`mirari run -t kvm -n KVM`) until every console shows the
#   guest's first line, against KVM raw QEMUs started by a shell loop with the command line the
#   agent gave QEMU;
# - UNIX unix instances likewise, against a shell loop starting the same executable UNIX times;
#   the agent runs at nice -5 as its systemd unit runs it (its guests at 0, like the anchors');
# - `mirari cluster deploy` of the example, unchanged (its build cached), on `mirari dev`, until
#   the instance's first heartbeat, against one raw QEMU, with the agent's command line and a
#   tap on the same bridge, booting to its first heartbeat.
# The storms' instances have no network and no health check (the example's config less
# [[network]] and [health]); the deploy is the example as it is. Guests use ACCELERATOR, tcg
# unless set (on these machines /dev/kvm is a software KVM: the example's BIOS boot takes ~4 s
# under it and ~0.1 s under TCG, which would hide what Mirari adds). Needs root (taps, a bridge).
#   [ACCELERATOR=kvm|tcg|auto] deploy/bench-boot.sh [KVM] [UNIX] [ROUNDS]   (defaults 100, 50, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
kvm_count="${1:-100}"
unix_count="${2:-50}"
rounds="${3:-3}"
accelerator="${ACCELERATOR:-tcg}"
cargo build --release --locked --quiet -p mirari-coordinator -p mirari-agent -p mirari --bins
bin="$PWD/target/release"
work="$(mktemp -d "${TMPDIR:-/var/tmp}/mirari-bench.XXXXXX")"
bridge=mbench0
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  pkill -f "$work/anchor" 2>/dev/null || true
  wait 2>/dev/null || true
  ip link delete mbench-tap 2>/dev/null || true
  ip link delete "$bridge" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
export MIRARI_STORE="$work/store"
mirari() { "$bin/mirari" "$@"; }
now() { date +%s.%N; }
# record FIGURE SECONDS: one round's figure, summarized at the end.
record() { printf '%s\t%s\n' "$1" "$2" >>"$work/results"; printf '  %-44s %7.3f s\n' "$1" "$2"; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.3f", e - s }'; }
ids_of() { sed -n 's/.*"\([0-9a-f]\{16\}\)".*/\1/p'; }
# The process an instance runs as, not its shim (whose command line holds the payload's): QEMU
# names the guest mirari-ID, a unix instance has its ID in its environment.
payload_pid() {
  local id="$1" p
  for p in /proc/[0-9]*; do
    [ "$(head -zn1 "$p/cmdline" 2>/dev/null | tr -d '\0')" = "$bin/mirari-agent" ] && continue
    if grep -qa -- "-name.mirari-$id" "$p/cmdline" 2>/dev/null \
      || grep -qaz "^MIRARI_INSTANCE_ID=$id\$" "$p/environ" 2>/dev/null; then
      echo "${p#/proc/}"
      return
    fi
  done
  return 1
}
# Saves the payload's command line, one argument per line, and its MIRARI_BLOCK_ variables.
capture() {
  local pid
  pid="$(payload_pid "$1")"
  tr '\0' '\n' <"/proc/$pid/cmdline" >"$2.argv"
  tr '\0' '\n' <"/proc/$pid/environ" | grep '^MIRARI_BLOCK_' >"$2.env" || true
}
# The anchor's command line for copy N: the captured one, its console to a file of its own and
# without the agent's QMP socket; a tap, if any, replaced by TAP.
anchor_argv() {
  local captured="$1" n="$2" tap="${3:-}" previous=""
  anchor=()
  while IFS= read -r arg; do
    case "$previous" in
      -serial) arg="file:$work/anchor/$n.log" ;;
      -name) arg="anchor-$n" ;;
      -netdev) arg="$(sed "s/ifname=[^,]*/ifname=$tap/" <<<"$arg")" ;;
    esac
    previous="$arg"
    if [ "$arg" = -qmp ]; then read -r _; previous=""; continue; fi
    anchor+=("$arg")
  done <"$captured.argv"
}
# Waits until every file named on stdin exists and contains MARKER.
until_marked() {
  local marker="$1" pending file missing
  mapfile -t pending
  while [ "${#pending[@]}" -gt 0 ]; do
    missing=()
    for file in "${pending[@]}"; do [ -e "$file" ] || missing+=("$file"); done
    mapfile -t pending < <(grep -LF -- "$marker" "${pending[@]}" 2>/dev/null || true)
    pending+=("${missing[@]}")
    if [ "${#pending[@]}" -gt 0 ]; then sleep 0.01; fi
  done
}

# The storm app: the example without a network or a health check, built for both targets.
cp -r examples/hello "$work/storm"
(
  cd "$work/storm"
  make clean >/dev/null 2>&1 || true
  awk '/^\[\[network\]\]|^\[health\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' mirari.toml \
    | sed -e 's/^args = .*/args = ["greeting=hello-from-mirari", "version={app.version}"]/' \
      -e "s/^accelerator = .*/accelerator = \"$accelerator\"/" >mirari.toml.new
  mv mirari.toml.new mirari.toml
  mirari configure >/dev/null 2>&1
  mirari build -t kvm >/dev/null 2>&1
  mirari build -t unix >/dev/null 2>&1
)
agent_sock="unix:$work/agent.sock"
nice -n -5 "$bin/mirari-agent" --state-dir "$work/agent" --listen "$agent_sock" \
  --max-instances $((kvm_count + unix_count)) --vcpus $((kvm_count + unix_count)) 2>"$work/agent.log" &
pids+=($!)
export MIRARI_AGENT="$agent_sock"
until mirari ps >/dev/null 2>&1; do sleep 0.1; done

# storm TARGET COUNT ROUND: the agent starts COUNT instances, then the shell loop as many.
storm() {
  local target="$1" count="$2" round="$3" start end ids n
  start="$(now)"
  ids="$(cd "$work/storm" && mirari run -t "$target" -n "$count" -o json 2>/dev/null | ids_of | paste -sd,)"
  end="$("$bin/mirari-bench" consoles --agent "$agent_sock" --ids "$ids" --marker "hello: boot args")"
  record "$count $target instances, mirari run" "$(elapsed "$start" "$end")"
  [ "$round" = 1 ] && capture "${ids%%,*}" "$work/$target"
  tr ',' '\n' <<<"$ids" | xargs -P 16 -n 1 "$bin/mirari" stop >/dev/null

  rm -rf "$work/anchor" && mkdir "$work/anchor"
  start="$(now)"
  for n in $(seq "$count"); do
    anchor_argv "$work/$target" "$n"
    if [ "$target" = unix ]; then
      env $(cat "$work/$target.env") "${anchor[@]}" >"$work/anchor/$n.log" 2>&1 &
    else
      "${anchor[@]}" 2>/dev/null &
    fi
    pids+=($!)
  done
  seq "$count" | sed "s|.*|$work/anchor/&.log|" | until_marked "hello: boot args"
  record "$count $target instances, shell loop" "$(elapsed "$start" "$(now)")"
  kill "${pids[@]: -$count}" 2>/dev/null || true
  wait "${pids[@]: -$count}" 2>/dev/null || true
}

echo "boot storms on one agent ($kvm_count kvm guests under $accelerator, $unix_count unix; $rounds rounds):"
for round in $(seq "$rounds"); do
  storm kvm "$kvm_count" "$round"
  storm unix "$unix_count" "$round"
done
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

# The cached deploy, on `mirari dev` with a bridge of its own.
cp -r examples/hello "$work/hello"
(cd "$work/hello" && make clean >/dev/null 2>&1 || true)
sed -i "s/^accelerator = .*/accelerator = \"$accelerator\"/" "$work/hello/mirari.toml"
"$bin/mirari" dev --dir "$work/dev" --bridge "$bridge" --subnet 10.91.0.0/24 >"$work/dev.log" 2>&1 &
pids+=($!)
until grep -q "mirari dev: ready" "$work/dev.log"; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/dev.log"; exit 1; }
  sleep 0.1
done
export MIRARI_ADDR="unix:$work/dev/coordinator.sock" MIRARI_AGENT="unix:$work/dev/agent.sock"
deploy() { mirari cluster deploy -f "$work/hello/mirari.toml" -t kvm -n 1 "$@"; }
instances() { mirari cluster status --instances -o json | ids_of | sort -u; }
# The first deploy builds; the instance's QEMU command line is the anchor's.
deploy >/dev/null
capture "$(instances | head -1)" "$work/deploy"
mirari cluster stop hello >/dev/null
echo "cluster deploy of the unchanged example (kvm, 1 instance) to its first heartbeat ($rounds rounds):"
for round in $(seq "$rounds"); do
  instances >"$work/before"
  start="$(now)"
  deploy >"$work/deploy.out" 2>&1 &
  deploy_pid=$!
  until id="$(instances | comm -13 "$work/before" - | head -1)" && [ -n "$id" ]; do sleep 0.01; done
  end="$("$bin/mirari-bench" consoles --agent "$MIRARI_AGENT" --ids "$id" --marker "hello: heartbeat 1")"
  wait "$deploy_pid" || { cat "$work/deploy.out"; exit 1; }
  grep -q "^reused" "$work/deploy.out" || { echo "the deploy built again:"; cat "$work/deploy.out"; exit 1; }
  record "cluster deploy (build cached)" "$(elapsed "$start" "$end")"
  mirari cluster stop hello >/dev/null

  rm -rf "$work/anchor" && mkdir "$work/anchor"
  start="$(now)"
  ip tuntap add dev mbench-tap mode tap
  ip link set mbench-tap master "$bridge" up
  anchor_argv "$work/deploy" 1 mbench-tap
  "${anchor[@]}" 2>/dev/null &
  pids+=($!)
  echo "$work/anchor/1.log" | until_marked "hello: heartbeat 1"
  record "raw QEMU" "$(elapsed "$start" "$(now)")"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  ip link delete mbench-tap
done

# Each figure's min/median/max over the rounds, and each Mirari figure over its anchor's.
echo "summary (seconds, min/median/max; ratio of medians to the anchor):"
sort -t$'\t' -k1,1 -k2,2n "$work/results" | awk -F'\t' '
  { values[$1] = values[$1] " " $2; n[$1]++ }
  END {
    for (f in values) {
      split(substr(values[f], 2), v, " ")
      median[f] = v[int((n[f] + 1) / 2)]
      line[f] = sprintf("%.3f / %.3f / %.3f", v[1], median[f], v[n[f]])
    }
    for (f in values) {
      anchor = f; sub(/mirari run$/, "shell loop", anchor); sub(/^cluster deploy \(build cached\)$/, "raw QEMU", anchor)
      ratio = (anchor != f && anchor in median) ? sprintf("  ratio %.2f", median[f] / median[anchor]) : ""
      printf "  %-44s %s%s\n", f, line[f], ratio
    }
  }' | sort
