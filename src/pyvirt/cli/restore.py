"""`pyvirt restore FILE`: start a VM from a snapshot written by `pyvirt vm save`
or `pyvirt vm snapshot`, in the foreground, as `pyvirt run` does.

The machine is the saved one (memory, vCPUs, devices and their files come
from the snapshot); only where its console and control API go are chosen
here. Exit statuses are `pyvirt run`'s.
"""

from __future__ import annotations

import sys

from .. import _log
from .main import LOG_FORMAT, run_machine

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from .main import RestoreArgs


def cmd_restore(args: argparse.Namespace | RestoreArgs, log_level: int) -> int:
    from ..kvm import KvmError
    from ..vmm.config import ConfigError, SerialConfig
    from ..vmm.machine import VmError
    from ..vmm.restore import restore_machine
    from ..vmm.snapshot import SnapshotError

    _log.configure(log_level, LOG_FORMAT)
    if not args.file:
        if not args.api_socket:
            print("pyvirt: restore needs a snapshot FILE, or --api-socket PATH to wait for one "
                  "(`pyvirt vm restore --api-socket PATH FILE`)", file=sys.stderr)
            return 2
        from ..vmm.restore_request import serve_and_restore

        try:
            serial = SerialConfig.parse(args.serial) if args.serial else None
        except ConfigError as e:
            print(f"pyvirt: {e}", file=sys.stderr)
            return 1
        return serve_and_restore(args.api_socket, serial, verify_memory=args.verify, disk_mode=args.disks)
    try:
        serial = SerialConfig.parse(args.serial) if args.serial else None
        machine = restore_machine(args.file, serial, args.api_socket, verify_memory=args.verify,
                                  disk_mode=args.disks, lazy=args.lazy)
    except (SnapshotError, ConfigError, VmError, KvmError) as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    return run_machine(machine)
