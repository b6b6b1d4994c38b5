#!/usr/bin/env python3
"""Stand-ins for FreeBSD's bhyveload, bhyve and bhyvectl, for the freebsd backend's tests on Linux.

One script, named by the link it is run through (bhyveload, bhyve or bhyvectl). Each accepts
only the options the backend uses, checks them the way the real program would, and fails with
a usage error on anything else, so a change to the planned command lines that the real
programs would reject fails the tests too.

The kernel's VM list (/dev/vmm/NAME) is the directory `vmm/` beside the links. bhyveload
"creates and loads" a VM there, recording the image and the loader environment; bhyve runs the
"guest": the image, which for these tests is the example's unix executable, with the words of
the loader variable mirari.args as its arguments and each further read-only disk as
MIRARI_BLOCK_<i>; its output is the console (com1,stdio). Signals and exit statuses follow
bhyve(8): SIGTERM presses the ACPI power button (the guest gets SIGTERM), and bhyve exits 1
when the guest powered off (the guest exited 0), 3 when it died otherwise (standing for a
triple fault), 1 after `bhyvectl --force-poweroff` and 4 after `bhyvectl --destroy`.
"""

import getopt
import json
import os
import re
import shutil
import signal
import subprocess
import sys

PROGRAM = os.path.basename(sys.argv[0])
VMM = os.path.join(os.path.dirname(os.path.abspath(sys.argv[0])), "vmm")
# bhyve's VM_MAX_NAMELEN is 32, with the terminating NUL.
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")
MEMORY = re.compile(r"^[0-9]+[KkMmGgTt]?$")
# The signals bhyvectl sends the running stand-in bhyve.
FORCE_POWEROFF = signal.SIGUSR1
DESTROYED = signal.SIGUSR2


def usage(message):
    print(f"{PROGRAM} (stand-in): {message}", file=sys.stderr)
    sys.exit(1)


def vm_dir(name):
    if not NAME.match(name):
        usage(f"invalid VM name {name!r}")
    return os.path.join(VMM, name)


def options(spec, long=()):
    try:
        opts, rest = getopt.getopt(sys.argv[1:], spec, long)
    except getopt.GetoptError as e:
        usage(str(e))
    return opts, rest


def bhyveload():
    opts, rest = options("d:e:m:")
    disk, memory, env = None, None, {}
    for opt, value in opts:
        if opt == "-d":
            disk = value
        elif opt == "-m":
            memory = value
        else:
            name, eq, val = value.partition("=")
            if not eq or not name:
                usage(f"-e wants name=value, not {value!r}")
            env[name] = val
    if disk is None or memory is None or len(rest) != 1:
        usage("usage: bhyveload -m mem-size -d disk-path [-e name=value] vmname")
    if not MEMORY.match(memory):
        usage(f"invalid memory size {memory!r}")
    if not os.path.isfile(disk):
        usage(f"cannot open disk image {disk}")
    directory = vm_dir(rest[0])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "loaded.json"), "w") as f:
        json.dump({"disk": disk, "memory": memory, "env": env}, f)
    print(f"stand-in loader: loaded {disk} into {rest[0]}")


def parse_slot(value, slots):
    slot, _, device = value.partition(",")
    if not slot.isdigit() or int(slot) > 31:
        usage(f"invalid PCI slot {value!r}")
    if int(slot) in slots:
        usage(f"PCI slot {slot} used twice")
    emulation, _, config = device.partition(",")
    if emulation in ("hostbridge", "lpc"):
        if config:
            usage(f"{emulation} takes no options: {value!r}")
    elif emulation == "virtio-blk":
        path, _, flags = config.partition(",")
        if flags != "ro":
            usage(f"the stand-in expects read-only disks, not {value!r}")
        if not os.path.isfile(path):
            usage(f"could not open backing file: {path}")
        config = path
    else:
        usage(f"unknown or unsimulated device {emulation!r}")
    slots[int(slot)] = (emulation, config)


def bhyve():
    opts, rest = options("AHPc:l:m:s:")
    flags, slots, cpus, memory, console = set(), {}, None, None, None
    for opt, value in opts:
        if opt in ("-A", "-H", "-P"):
            flags.add(opt)
        elif opt == "-c":
            cpus = value
        elif opt == "-m":
            memory = value
        elif opt == "-l":
            console = value
        else:
            parse_slot(value, slots)
    if len(rest) != 1:
        usage("usage: bhyve [-AHP] -c cpus -m mem -s slot,emu[,conf] -l com1,stdio vmname")
    if cpus is None or not cpus.isdigit() or int(cpus) < 1:
        usage(f"invalid vCPU count {cpus!r}")
    if memory is None or not MEMORY.match(memory):
        usage(f"invalid memory size {memory!r}")
    if console != "com1,stdio":
        usage(f"the stand-in simulates only -l com1,stdio, not {console!r}")
    if slots.get(0) != ("hostbridge", "") or ("lpc", "") not in slots.values():
        usage("slot 0 must be the hostbridge and com1 needs an lpc device")
    directory = vm_dir(rest[0])
    try:
        with open(os.path.join(directory, "loaded.json")) as f:
            loaded = json.load(f)
    except OSError:
        print(f"vm_open: {rest[0]} could not be opened: nothing was loaded", file=sys.stderr)
        sys.exit(4)
    if loaded["memory"] != memory:
        print(f"vm_setup_memory: {memory} differs from the loaded {loaded['memory']}", file=sys.stderr)
        sys.exit(4)
    disks = [config for _, (emulation, config) in sorted(slots.items()) if emulation == "virtio-blk"]
    if not disks or disks[0] != loaded["disk"]:
        usage(f"the first disk must be the loaded image {loaded['disk']}")
    env = dict(os.environ)
    env.update({f"MIRARI_BLOCK_{i}": path for i, path in enumerate(disks[1:])})
    args = loaded["env"].get("mirari.args", "").split()
    guest = subprocess.Popen([disks[0], *args], env=env, stdin=subprocess.DEVNULL)
    ended_by = []

    def power_button(_signum, _frame):
        guest.send_signal(signal.SIGTERM)

    def pulled(exit_code):
        def handler(_signum, _frame):
            ended_by.append(exit_code)
            guest.kill()

        return handler

    signal.signal(signal.SIGTERM, power_button)
    signal.signal(FORCE_POWEROFF, pulled(1))
    signal.signal(DESTROYED, pulled(4))
    pid_file = os.path.join(directory, "bhyve.pid")
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    status = guest.wait()
    if os.path.exists(pid_file):  # not when bhyvectl --destroy took the VM away
        os.remove(pid_file)
    if ended_by:
        sys.exit(ended_by[0])
    sys.exit(1 if status == 0 else 3)


def bhyvectl():
    opts, rest = options("", ["vm=", "destroy", "force-poweroff"])
    names = [value for opt, value in opts if opt == "--vm"]
    operations = [opt for opt, _ in opts if opt != "--vm"]
    if rest or len(names) != 1 or len(operations) != 1:
        usage("usage: bhyvectl --vm=NAME (--destroy | --force-poweroff)")
    directory = vm_dir(names[0])
    if not os.path.isdir(directory):
        print(f"vm_open: {names[0]} could not be opened: No such file or directory", file=sys.stderr)
        sys.exit(1)
    try:
        with open(os.path.join(directory, "bhyve.pid")) as f:
            running = int(f.read())
    except OSError:
        running = None
    if operations[0] == "--destroy":
        if running is not None:
            os.kill(running, DESTROYED)
        shutil.rmtree(directory)
    elif running is not None:
        os.kill(running, FORCE_POWEROFF)


{"bhyveload": bhyveload, "bhyve": bhyve, "bhyvectl": bhyvectl}.get(PROGRAM, lambda: usage("run me as bhyve, bhyvectl or bhyveload"))()
