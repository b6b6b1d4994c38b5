#!/usr/bin/env bash
# Boot the test host under QEMU TCG, in the background (QEMU daemonizes), and optionally wait
# until dom0 is ready. See README.md.
#   boot.sh [--image DIR] [--state DIR] [--ssh-port N] [--agent-port N] [--fwd HOST:GUEST]...
#           [--mem MiB] [--dom0-mem MiB] [--persist] [--wait SECONDS]
# STATE gets qemu.pid, serial.log (Xen + dom0 console) and env (ports, key), which ssh.sh and
# stop.sh read. The disk is opened with -snapshot (every boot starts from the built image, and
# several instances can share it) unless --persist.
set -euo pipefail
cache="${XTH_CACHE:-/var/tmp/xen-testhost}"
image="${XTH_IMAGE:-$cache/image}"
state="${XTH_STATE:-$cache/run}"
ssh_port="${XTH_SSH_PORT:-10022}"
agent_port="${XTH_AGENT_PORT:-17401}"
mem="${XTH_MEM:-4096}"
dom0_mem="${XTH_DOM0_MEM:-1024}"
snapshot=-snapshot
wait=""
fwds=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image="$2"; shift 2 ;;
    --state) state="$2"; shift 2 ;;
    --ssh-port) ssh_port="$2"; shift 2 ;;
    --agent-port) agent_port="$2"; shift 2 ;;
    --fwd) fwds+=("$2"); shift 2 ;;
    --mem) mem="$2"; shift 2 ;;
    --dom0-mem) dom0_mem="$2"; shift 2 ;;
    --persist) snapshot=""; shift ;;
    --wait) wait="$2"; shift 2 ;;
    *) echo "usage: see the head of $0" >&2; exit 2 ;;
  esac
done
image="$(cd "$image" && pwd)"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
for f in disk.img xen.elf vmlinuz initrd.img id_ed25519; do
  [ -f "$image/$f" ] || { echo "$image/$f missing: run build-image.sh first" >&2; exit 1; }
done
if [ -f "$state/qemu.pid" ] && kill -0 "$(cat "$state/qemu.pid")" 2>/dev/null; then
  echo "already running (pid $(cat "$state/qemu.pid")): stop.sh --state $state first" >&2
  exit 1
fi
rm -f "$state/qemu.pid" "$state/serial.log" "$state/env"

# Bound to 127.0.0.1 only: dom0 has a passwordless root console and a test agent.
net="user,id=n0,hostfwd=tcp:127.0.0.1:$ssh_port-:22,hostfwd=tcp:127.0.0.1:$agent_port-:7401"
for f in ${fwds[@]+"${fwds[@]}"}; do net+=",hostfwd=tcp:127.0.0.1:${f%%:*}-:${f##*:}"; done

# QEMU's multiboot loader boots Xen directly (no bootloader in the image). Modules are
# "path cmdline" separated by commas: Xen drops the path and hands the rest to dom0.
# +svm,+npt: Xen wants HVM support to run PVH guests (emulated by TCG; /dev/kvm here is unusable).
# -no-reboot: a crashing Xen or dom0 ends QEMU instead of rebooting in a loop.
# -nodefaults: no floppy, CD-ROM or VGA for dom0 to probe (each costs seconds under TCG).
qemu-system-x86_64 -nodefaults \
  -name xen-testhost -machine pc -accel tcg,thread=multi -cpu qemu64,+svm,+npt \
  -smp 2 -m "$mem" \
  -kernel "$image/xen.elf" \
  -append "console=com1 com1=115200,8n1 dom0_mem=${dom0_mem}M,max:${dom0_mem}M dom0_max_vcpus=2 loglvl=all guest_loglvl=all" \
  -initrd "$image/vmlinuz root=/dev/vda rw console=hvc0 earlyprintk=xen,$image/initrd.img" \
  -drive "file=$image/disk.img,if=virtio,format=raw" $snapshot \
  -netdev "$net" -device virtio-net-pci,netdev=n0 \
  -serial "file:$state/serial.log" -display none -monitor none -no-reboot \
  -daemonize -pidfile "$state/qemu.pid"

cat >"$state/env" <<ENV
XTH_PID=$(cat "$state/qemu.pid")
XTH_SSH_PORT=$ssh_port
XTH_AGENT_PORT=$agent_port
XTH_KEY=$image/id_ed25519
XTH_SERIAL=$state/serial.log
ENV
echo "booting: pid $(cat "$state/qemu.pid"), serial log $state/serial.log, ssh 127.0.0.1:$ssh_port, agent 127.0.0.1:$agent_port" >&2

[ -n "$wait" ] || exit 0
# Poll the serial log for the marker that xen-testhost-ready.service prints in dom0.
pid="$(cat "$state/qemu.pid")"
deadline=$(( SECONDS + wait ))
while :; do
  if grep -qa '^XEN-TESTHOST-READY' "$state/serial.log"; then
    echo "ready after ${SECONDS}s: $(grep -a '^XEN-TESTHOST-READY' "$state/serial.log")" >&2
    exit 0
  fi
  why=""
  grep -qa '^XEN-TESTHOST-FAILED' "$state/serial.log" && why="$(grep -a '^XEN-TESTHOST-FAILED' "$state/serial.log")"
  kill -0 "$pid" 2>/dev/null || why="QEMU exited"
  [ "$SECONDS" -lt "$deadline" ] || why="not ready after ${wait}s"
  if [ -n "$why" ]; then
    tail -30 "$state/serial.log" >&2
    echo "boot.sh: $why; stopped it (full log: $state/serial.log)" >&2
    "$(dirname "$0")/stop.sh" --state "$state"
    exit 1
  fi
  sleep 1
done
