"""`pyvirt` command line: `run` boots a VM in the foreground; `restore`
starts one from a snapshot file (cli/restore.py); `vm ...` talks
to a running one through its control API (cli/vm.py); `image ...` makes
and inspects disk images with qemu-img's verbs (cli/image.py); `host check`
validates the host.

Built on argparse so that `pyvirt run` starts in milliseconds: the VM
process imports only the standard library and pyvirt's own modules. A
`pyvirt run` whose options are all plain (`--kernel FILE`, `--memory=1G`,
`-v`...) does not even load argparse (with re, gettext and shutil that is
milliseconds on a slow host) or its definition in parser.py: `parse_run`
reads it into the same attributes argparse would. Everything else (help,
abbreviations, options before `run`, values starting with "-", any error)
goes to argparse, so its messages and corner cases are argparse's own.
"""

from __future__ import annotations

import sys

from .. import _log

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import NoReturn

    from ..vmm.config import VmConfig
    from ..vmm.machine import Machine

LOG_FORMAT = "pyvirt: %(message)s"
WARNING = 30  # logging.WARNING


def _int(text: str) -> int:
    return int(text, 0)


PVM_CHOICES = ("auto", "on", "off")
# `run` options that take a value, as build_parser declares them: option -> (dest, type).
_RUN_OPTIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "--config": ("config", str), "--kernel": ("kernel", str), "--initrd": ("initrd", str),
    "--cmdline": ("cmdline", str), "--memory": ("memory", str), "-m": ("memory", str),
    "--cpus": ("cpus", int), "--smp": ("cpus", int), "--serial": ("serial", str),
    "--debug-exit-port": ("debug_exit_port", _int), "--pvm": ("pvm", str), "--api-socket": ("api_socket", str),
    "--incoming": ("incoming", str),
}


class RunArgs:
    """The namespace `build_parser().parse_args(["run", ...])` returns."""

    def __init__(self) -> None:
        self.verbose = 0
        self.command = "run"
        self.run_verbose = 0
        self.config: str | None = None
        self.kernel: str | None = None
        self.initrd: str | None = None
        self.cmdline: str | None = None
        self.memory: str | None = None
        self.cpus: int | None = None
        self.serial: str | None = None
        self.debug_exit_port: int | None = None
        self.pvm: str | None = None
        self.api_socket: str | None = None
        self.incoming: str | None = None
        # virtio devices: only argparse fills these (the fast path leaves them unset)
        self.disk: list[str] | None = None
        self.net: list[str] | None = None
        self.vsock: str | None = None
        self.rng = False
        self.balloon = False
        self.console: str | None = None
        self.transport: str | None = None


def _verbosity(arg: str) -> int:
    """How much `-v`, `-vv`... or `--verbose` adds; 0 for any other word."""
    if arg == "--verbose":
        return 1
    return len(arg) - 1 if len(arg) >= 2 and arg[0] == "-" and arg[1:] == "v" * (len(arg) - 1) else 0


def parse_run(argv: list[str]) -> RunArgs | None:
    """`pyvirt run` options parsed as argparse would, or None for anything
    but the plain forms, which argparse must then handle."""
    if not argv or argv[0] != "run":
        return None
    args = RunArgs()
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if _verbosity(arg):
            args.run_verbose += _verbosity(arg)
            continue
        option, eq, value = arg.partition("=")
        if option not in _RUN_OPTIONS or (eq and not option.startswith("--")):
            return None
        if not eq:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if value.startswith("-"):
            return None
        dest, convert = _RUN_OPTIONS[option]
        try:
            converted = convert(value)
        except ValueError:
            return None
        if dest == "pvm" and converted not in PVM_CHOICES:
            return None
        setattr(args, dest, converted)
    return args


class RestoreArgs:
    """The namespace `build_parser().parse_args(["restore", ...])` returns."""

    def __init__(self) -> None:
        self.verbose = 0
        self.command = "restore"
        self.run_verbose = 0
        self.file = ""
        self.serial: str | None = None
        self.api_socket: str | None = None
        self.verify = False
        self.lazy = False
        self.disks = "overlay"


_RESTORE_OPTIONS = {"--serial": "serial", "--api-socket": "api_socket", "--disks": "disks"}


def parse_restore(argv: list[str]) -> RestoreArgs | None:
    """`pyvirt restore FILE` with plain options, as argparse would parse it,
    or None for anything else (argparse then handles it): a restore is
    meant to take milliseconds, and argparse alone costs tens of them."""
    if not argv or argv[0] != "restore":
        return None
    args = RestoreArgs()
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if _verbosity(arg):
            args.run_verbose += _verbosity(arg)
            continue
        if arg in ("--verify", "--lazy"):
            setattr(args, arg[2:], True)
            continue
        if not arg.startswith("-"):
            if args.file or not arg:
                return None
            args.file = arg
            continue
        option, eq, value = arg.partition("=")
        if option not in _RESTORE_OPTIONS:
            return None
        if not eq:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if value.startswith("-") or not value:
            return None
        setattr(args, _RESTORE_OPTIONS[option], value)
    return args if args.file else None


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the whole command line (defined in parser.py)."""
    from .parser import build_parser

    return build_parser()


def __getattr__(name: str) -> object:
    if name == "EXIT_STATUS_HELP":  # moved to parser.py with the parser
        from .parser import EXIT_STATUS_HELP

        return EXIT_STATUS_HELP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cmd_run(args: argparse.Namespace | RunArgs, log_level: int = WARNING) -> int:
    from ..kvm import KvmError
    from ..vmm.config import ConfigError, SerialConfig, VmConfig, parse_size
    from ..vmm.machine import Machine, VmError

    # After those imports: if one of them loaded `logging`, it is configured now.
    _log.configure(log_level, LOG_FORMAT)
    if getattr(args, "incoming", None):
        return _run_incoming(args)
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
        if args.api_socket:
            cfg.api_socket = args.api_socket
        _device_args(cfg, args)
        machine = Machine(cfg)
    except (ConfigError, VmError, KvmError) as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    return run_machine(machine)


def run_machine(machine: Machine) -> int:
    """Run a built machine in the foreground and close it; the exit status."""
    from ..vmm.machine import VmError

    try:
        return machine.run()
    except VmError as e:  # e.g. the API socket's path is taken: nothing ran yet
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    finally:
        machine.close()


def _run_incoming(args: argparse.Namespace | RunArgs) -> int:
    """`pyvirt run --incoming tcp:ADDR:PORT`: the machine comes from the source."""
    from ..migration.destination import IncomingOptions, run_incoming
    from ..migration.stream import parse_uri
    from ..vmm.config import ConfigError, SerialConfig, VmConfig, parse_size

    try:
        parse_uri(args.incoming or "")
        unused = [name for name in ("kernel", "initrd", "cmdline", "config") if getattr(args, name)]
        if unused:
            raise ConfigError(f"--incoming takes the machine from the migration source: --{unused[0]} is not used "
                              "(--memory and --cpus are checked, --disk and --net say where the disks and TAPs "
                              "are here)")
        devices = VmConfig()
        _device_args(devices, args)
        opt = IncomingOptions(uri=args.incoming or "", api_socket=args.api_socket,
                              serial=SerialConfig.parse(args.serial) if args.serial else None,
                              disks=devices.disks, nets=devices.nets,
                              memory=parse_size(args.memory) if args.memory else None, cpus=args.cpus)
    except (ConfigError, ValueError) as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    return run_incoming(opt)


def _device_args(cfg: "VmConfig", args: "argparse.Namespace | RunArgs") -> None:
    """Virtio options (only argparse fills them: the fast path has none)."""
    disks, nets, vsock = getattr(args, "disk", None), getattr(args, "net", None), getattr(args, "vsock", None)
    if disks or nets or vsock:
        from ..vmm.device_config import DiskConfig, NetConfig, VsockConfig

        if disks:
            cfg.disks = [DiskConfig.parse(d) for d in disks]
        if nets:
            cfg.nets = [NetConfig.parse(n) for n in nets]
        if vsock:
            cfg.vsock = VsockConfig.parse(vsock)
    for name in ("rng", "balloon"):
        if getattr(args, name, False):
            setattr(cfg, name, True)
    for name in ("console", "transport"):
        if getattr(args, name, None):
            setattr(cfg, name, getattr(args, name))


def cmd_host_check() -> int:
    from ..vmm.host_check import run_checks

    checks = run_checks()
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{c.name.ljust(width)} : {c.result:4}  {c.detail}")
    return 1 if any(c.result == "FAIL" for c in checks) else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line `argv` (default: this process's), returning the exit status.

    `pyvirt run` on the process's own command line does not return: once
    the VM is closed it ends the process at once (see `_exit_now`).
    """
    words = sys.argv[1:] if argv is None else argv
    fast = parse_run(words)
    fast_restore = parse_restore(words) if fast is None else None
    if fast is not None:
        status = cmd_run(fast, WARNING - 10 * min(fast.run_verbose, 2))
    elif fast_restore is not None:
        from .restore import cmd_restore

        status = cmd_restore(fast_restore, WARNING - 10 * min(fast_restore.run_verbose, 2))
    else:
        parser = build_parser()
        args = parser.parse_args(_image_argv(sys.argv[1:] if argv is None else argv))
        level = WARNING - 10 * min(args.verbose + getattr(args, "run_verbose", 0), 2)
        if args.command == "restore":
            from .restore import cmd_restore

            status = cmd_restore(args, level)
        elif args.command != "run":
            _log.configure(level, LOG_FORMAT)
            if args.command == "host" and args.host_command == "check":
                return cmd_host_check()
            if args.command == "vm" and args.vm_command:
                from .vm import cmd_vm

                return cmd_vm(args)
            if args.command == "image" and args.image_command:
                from .image import cmd_image

                return cmd_image(args)
            parser.print_help()
            return 2
        else:
            status = cmd_run(args, level)
    if argv is None:
        _exit_now(status)
    return status


def _image_argv(argv: list[str]) -> list[str]:
    """`argv` with a "--" before the SIZE of `image resize IMG -1G`, which
    argparse would take for an option (qemu-img also reads it apart)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] not in ("-", "--"):
        i += 1  # options before the command (-v): none takes a value
    words = argv[i:i + 2]
    if words == ["image", "resize"] and len(argv) > i + 3 and "--" not in argv[i + 2:]:
        size = argv[-1]
        if len(size) > 1 and size[0] == "-" and (size[1].isdigit() or size[1] == "."):
            return [*argv[:-1], "--", size]
    return argv


def _exit_now(status: int) -> NoReturn:
    """Flush stdout and stderr and end the process with `status`, skipping the
    interpreter's teardown.

    When `pyvirt run` returns, the VM is closed (vCPU threads joined, fds,
    memory and terminal released) and nothing is left to clean up: no atexit
    work, no non-daemon threads. Freeing every module and object, as a
    normal exit does, costs about 10 ms on a slow host, a tenth of a short
    VM's life.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a closed stream: as at a normal exit, nothing to do
            pass
    os._exit(status)
