"""The `pyvirt` command line as an argparse parser.

`main` loads this only when `parse_run` leaves the command line to argparse
(help, errors, `host check`...): a plain `pyvirt run` does without it.
"""

from __future__ import annotations

import argparse

from .main import PVM_CHOICES, _int

EXIT_STATUS_HELP = """\
exit status:
  (V<<1)|1  the guest wrote V to the debug-exit port (QEMU isa-debug-exit)
  0         the guest powered off, or it was stopped (SIGINT, SIGTERM, Ctrl-A x)
  1         pyvirt error (configuration, kernel image, KVM)
  2         usage error
  32        the guest reset (i8042, port 0xcf9, ACPI reset)
  34        the guest triple-faulted
  36        unhandled vCPU exit (e.g. emulation failure); a report goes to stderr
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyvirt", description="pyvirt: a KVM virtual machine monitor in Python")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="boot a VM in the foreground",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_STATUS_HELP)
    run.add_argument("-v", "--verbose", dest="run_verbose", action="count", default=0,
                     help="more logging: unclaimed I/O, boot details (-vv for debug)")
    run.add_argument("--config", metavar="FILE", help="VM settings as JSON (command-line options override them)")
    run.add_argument("--kernel", metavar="FILE", help="PVH ELF, Linux bzImage, x86-64 ELF vmlinux or multiboot kernel")
    run.add_argument("--initrd", metavar="FILE", help="initial ramdisk")
    run.add_argument("--cmdline", metavar="TEXT", help="kernel command line")
    run.add_argument("--memory", "-m", metavar="SIZE", help="guest memory, e.g. 128M, 1G (default 128M)")
    run.add_argument("--cpus", "--smp", type=int, metavar="N", help="number of vCPUs (default 1)")
    run.add_argument("--serial", metavar="SPEC", help="stdio (default), null, file:PATH or socket:PATH")
    run.add_argument("--debug-exit-port", type=_int, metavar="PORT", help="debug-exit I/O port (default 0xf4)")
    run.add_argument("--pvm", choices=PVM_CHOICES, help="kvm_pvm compatibility layer (default auto)")
    run.add_argument("--api-socket", metavar="PATH",
                     help="serve the control API (docs/api.yaml) on this unix socket; see `pyvirt vm`")
    dev = run.add_argument_group("virtio devices")
    dev.add_argument("--disk", action="append", metavar="SPEC",
                     help="path=IMG[,readonly=on][,serial=ID][,iops=N][,bps=N]: a virtio-blk disk (repeatable)")
    dev.add_argument("--net", action="append", metavar="SPEC",
                     help="tap=NAME[,mac=MAC]: a virtio-net NIC on a TAP device, created if missing (repeatable)")
    dev.add_argument("--vsock", metavar="SPEC",
                     help="cid=N,socket=PATH: virtio-vsock; guest connections to port P reach PATH_P, "
                          "host connections to PATH send 'CONNECT P'")
    dev.add_argument("--rng", action="store_true", help="virtio-rng fed from the host's getrandom()")
    dev.add_argument("--balloon", action="store_true", help="virtio-balloon (inflate/deflate through the control API)")
    dev.add_argument("--console", choices=("serial", "virtio"), help="where the console goes (default serial)")
    dev.add_argument("--transport", choices=("pci", "mmio"), help="virtio transport (default pci)")

    _add_vm_parser(sub)

    host = sub.add_parser("host", help="host information")
    hsub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND")
    hsub.add_parser("check", help="check that this host can run VMs (like virt-host-validate)")
    return p


def _add_vm_parser(sub: argparse._SubParsersAction) -> None:
    vm = sub.add_parser("vm", help="control a running VM through its API socket",
                        description="Talk to a VM started with `pyvirt run --api-socket PATH`.")
    vsub = vm.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-socket", metavar="PATH", required=True, help="the VM's --api-socket path")
    common.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")
    common.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the VM's answer (default 30)")
    for name, text in (("status", "state, vCPUs, memory, uptime, devices"),
                       ("stats", "per-device and per-vCPU counters"),
                       ("pause", "stop running guest code"),
                       ("resume", "run guest code again"),
                       ("stop", "power the VM off")):
        vsub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
    balloon = vsub.add_parser("balloon", parents=[common], help="show or set the balloon",
                              description="Without TARGET, show the balloon; with it, ask the guest to give "
                                          "back TARGET of its memory (0 gives it all back).")
    balloon.add_argument("target", nargs="?", metavar="TARGET", help="balloon size, e.g. 64M, 1G, 0")
