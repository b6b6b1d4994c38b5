#!/usr/bin/env bash
# End-to-end check of the test host, printing the timings the README quotes:
# build (with --extra/--enable) -> boot -> ready -> xl info/list in dom0 -> both port directions
# -> a guest that prints on its console (and, for hello, serves HTTP to dom0 over xenbr0) -> stop.
#   selftest.sh [--cache DIR]
# The guest is examples/hello's PVH kernel when it has been built, else the dom0 kernel as a PV
# guest with a busybox initrd (XTH_SELFTEST_GUEST=pv forces that). Uses its own state dir and
# ports, so it can run beside boot.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${XTH_CACHE:-/var/tmp/xen-testhost}"
if [ "${1:-}" = --cache ]; then cache="$2"; fi
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
state="$cache/selftest"
image="$cache/selftest-image"
ssh_port="${XTH_SELFTEST_SSH_PORT:-10122}"
agent_port="${XTH_SELFTEST_AGENT_PORT:-17501}"
outer_port="${XTH_SELFTEST_OUTER_PORT:-18080}"
work="$(mktemp -d)"
web_pid=""
cleanup() {
  "$here/stop.sh" --state "$state"
  if [ -n "$web_pid" ]; then kill "$web_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "selftest: FAIL: $*" >&2; exit 1; }
dom0() { "$here/ssh.sh" --state "$state" "$@"; }

# Extra files stand in for the agent: a unit serving on 7401 (proves --extra, --enable and the
# agent port forward) and a replaced /etc/motd (proves the cached rootfs is left untouched).
mkdir -p "$work/extra/etc/systemd/system" "$work/extra/srv/xth" "$work/outer"
echo XTH-EXTRA-OK >"$work/extra/srv/xth/index.html"
echo "xen-testhost selftest" >"$work/extra/etc/motd"
cat >"$work/extra/etc/systemd/system/xth-selftest-http.service" <<'UNIT'
[Unit]
Description=Selftest stand-in for mirari-agent on port 7401
[Service]
ExecStart=/bin/busybox httpd -f -p 7401 -h /srv/xth
[Install]
WantedBy=multi-user.target
UNIT

t=$(now)
"$here/build-image.sh" --cache "$cache" --out "$image" --extra "$work/extra" --enable xth-selftest-http.service >/dev/null
echo "build-image.sh: $(since "$t") s"
for f in "$cache"/rootfs-*/etc/motd; do
  if grep -q selftest "$f"; then fail "the cached rootfs was modified through a hard link: $f"; fi
done

t=$(now)
"$here/boot.sh" --image "$image" --state "$state" --ssh-port "$ssh_port" --agent-port "$agent_port" --wait 900
echo "boot to XEN-TESTHOST-READY: $(since "$t") s"

t=$(now); dom0 true; echo "first ssh command: $(since "$t") s"
t=$(now); dom0 true; echo "later ssh command: $(since "$t") s"
dom0 'xl info | grep -E "^(xen_version|total_memory|free_memory|nr_cpus|virt_caps|xen_commandline)"; xl list'
echo "dom0: $(dom0 'ldd --version | head -1'), xenstored socket: $(dom0 'ls /run/xenstored/socket'), $(dom0 'ls /dev/xen/xenbus')"

# outer -> dom0 through hostfwd, dom0 -> outer through 10.0.2.2 (QEMU maps it to our 127.0.0.1).
got="$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$agent_port/', timeout=30).read().decode().strip())")"
[ "$got" = XTH-EXTRA-OK ] || fail "127.0.0.1:$agent_port gave '$got'"
echo "outer -> dom0:7401 via 127.0.0.1:$agent_port: ok"
echo XTH-OUTER-OK >"$work/outer/index.html"
python3 -m http.server --bind 127.0.0.1 --directory "$work/outer" "$outer_port" >/dev/null 2>&1 &
web_pid=$!
got="$(dom0 "for i in \$(seq 20); do busybox wget -qO- http://10.0.2.2:$outer_port/ && break; sleep 0.5; done")"
[ "$got" = XTH-OUTER-OK ] || fail "dom0 could not fetch from 10.0.2.2:$outer_port (got '$got')"
echo "dom0 -> outer via 10.0.2.2:$outer_port: ok"
dom0 'ip -4 -o addr show dev xenbr0 | grep -q " 10.99.0.1/24 " && [ -d /sys/module/xen_netback ]' \
  || fail "no xenbr0 with 10.99.0.1/24, or no xen-netback, in dom0"
echo "dom0: xenbr0 10.99.0.1/24, xen-netback loaded"

# Guest: copy its files in, then let run-guest (below, run in dom0) time create -> first output.
hello="$repo/examples/hello/_build/hello-xen.elf"
if [ -f "$hello" ] && [ "${XTH_SELFTEST_GUEST:-}" != pv ]; then
  echo "guest: examples/hello/_build/hello-xen.elf as a PVH guest"
  dom0 'mkdir -p /root/selftest && cat >/root/selftest/kernel' <"$hello"
  tar --format=ustar -cf - -C "$repo/examples/hello/data" . | dom0 'cat >/root/selftest/files.tar'
  dom0 'cat >/root/selftest/guest.cfg' <<'CFG'
name = "selftest"
type = "pvh"
kernel = "/root/selftest/kernel"
ramdisk = "/root/selftest/files.tar"
cmdline = "--ipv4=10.99.0.2/24 --ipv4-gateway=10.99.0.1 mode=test"
memory = 32
vcpus = 1
on_crash = "preserve"
vif = ['bridge=xenbr0,mac=00:16:3e:12:34:56']
CFG
  marker="hello: heartbeat 1"
  url=http://10.99.0.2/
else
  echo "guest: the dom0 kernel as a PV guest with a busybox initrd"
  # shellcheck disable=SC2016 # expanded by the shell in dom0
  dom0 'set -e; rm -rf /root/selftest; mkdir -p /root/selftest/initrd/bin; cd /root/selftest/initrd
    cp /bin/busybox bin/; ln -s busybox bin/sh; ln -s busybox bin/sleep
    printf "#!/bin/sh\necho SELFTEST-GUEST-UP\nwhile :; do sleep 60; done\n" >init; chmod +x init
    find . | cpio -o -H newc 2>/dev/null | gzip >../initrd.gz
    printf "name = \"selftest\"\ntype = \"pv\"\nkernel = \"%s\"\nramdisk = \"/root/selftest/initrd.gz\"\nextra = \"console=hvc0 quiet\"\nmemory = 128\nvcpus = 1\non_crash = \"preserve\"\n" \
      "$(ls /boot/vmlinuz-* | head -1)" >../guest.cfg'
  marker=SELFTEST-GUEST-UP
  url=""
fi
dom0 sh -s -- "'$marker'" "'$url'" <<'GUEST'
# xenconsoled keeps a guest's output until someone reads the console pty, so reading it right
# after xl create loses nothing.
set -eu
cd /root/selftest
xl destroy selftest 2>/dev/null || true
t0=$(date +%s.%N)
xl create guest.cfg 2>/dev/null
t1=$(date +%s.%N)
tty=$(xenstore-read "/local/domain/$(xl domid selftest)/console/tty")
timeout 120 cat "$tty" >console.out 2>/dev/null &
i=0
until grep -q "$1" console.out; do
  i=$((i + 1)); [ "$i" -lt 1200 ] || { echo "no '$1' on the guest console"; cat console.out; exit 1; }
  sleep 0.1
done
awk -v a="$t0" -v b="$t1" -v c="$(date +%s.%N)" \
  'BEGIN { printf "guest: xl create returned after %.1f s, first console output after %.1f s\n", b - a, c - a }'
sleep 2
echo "guest console ($tty):"; sed 's/^/  | /' console.out | head -12
xl list
if [ -n "$2" ]; then
  t0=$(date +%s.%N)
  curl -sS --max-time 10 --retry 5 --retry-connrefused --retry-delay 1 -o page.html "$2" \
    || { echo "curl $2 failed"; exit 1; }
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "guest: curl took %.1f s, ", b - a }'
  echo "$2 from dom0 over xenbr0:"; sed 's/^/  | /' page.html
fi
xl destroy selftest
i=0
while ip -o link | grep -q ' vif'; do  # the backend's vifD.0 goes with the domain
  i=$((i + 1)); [ "$i" -lt 50 ] || { echo "a vif is left after xl destroy:"; ip -br link; exit 1; }
  sleep 0.1
done
GUEST
echo "selftest: PASS"
