"""`pyvirt` command line: `run` boots a VM in the foreground; `host check`
validates the host.

Built on argparse so that `pyvirt run` starts in milliseconds: the VM
process imports only the standard library and pyvirt's own modules.
"""

from __future__ import annotations

import argparse
import logging
import sys

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


def _int(text: str) -> int:
    return int(text, 0)


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
    run.add_argument("--pvm", choices=("auto", "on", "off"), help="kvm_pvm compatibility layer (default auto)")

    host = sub.add_parser("host", help="host information")
    hsub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND")
    hsub.add_parser("check", help="check that this host can run VMs (like virt-host-validate)")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from ..kvm import KvmError
    from ..vmm.config import ConfigError, SerialConfig, VmConfig, parse_size
    from ..vmm.machine import Machine, VmError

    try:
        cfg = VmConfig.from_file(args.config) if args.config else VmConfig()
        if args.kernel:
            cfg.kernel = args.kernel
        if args.initrd:
            cfg.initrd = args.initrd
        if args.cmdline is not None:
            cfg.cmdline = args.cmdline
        if args.memory:
            cfg.memory = parse_size(args.memory)
        if args.cpus is not None:
            cfg.cpus = args.cpus
        if args.serial:
            cfg.serial = SerialConfig.parse(args.serial)
        if args.debug_exit_port is not None:
            cfg.debug_exit_port = args.debug_exit_port
        if args.pvm:
            cfg.pvm = args.pvm
        machine = Machine(cfg)
    except (ConfigError, VmError, KvmError) as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    try:
        return machine.run()
    finally:
        machine.close()


def cmd_host_check() -> int:
    from ..vmm.host_check import run_checks

    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.name.ljust(width)} : {c.result:4}  {c.detail}")
    return 1 if any(c.result == "FAIL" for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose + getattr(args, "run_verbose", 0)
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="pyvirt: %(message)s", stream=sys.stderr)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "host" and args.host_command == "check":
        return cmd_host_check()
    parser.print_help()
    return 2
