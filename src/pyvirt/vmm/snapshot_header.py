"""The "config" section of a snapshot: the VM's configuration and the host it ran on.

`pyvirt restore` builds the machine from this alone (no command-line
options but where its output goes), so it records everything that shapes
the machine: memory, vCPUs, the command line (fw_cfg serves it), every
device with its absolute path, the NICs' actual MAC addresses, whether the
kvm_pvm layer was on. The file is untrusted: `config_from_header` checks
every key's type and range and then the same `VmConfig.validate` a `run`
gets, and a missing or mistyped key is an error naming it.
"""

from __future__ import annotations

import os

from .snapshot import CONFIG, Snapshot, SnapshotError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import VmConfig


def machine_header(cfg: VmConfig, *, kind: str, pvm: bool, backend: str, tsc_khz: int,
                   regions: Sequence[tuple[int, int]], macs: Sequence[str], compression: str,
                   created: float) -> dict[str, object]:
    """The "config" section: what `pyvirt restore` needs to build the same
    machine (no kernel: its memory is in the file), and the host it ran on.
    Paths are absolute (restore may run elsewhere); `macs` are the NICs'
    actual addresses (a default one depends on the process)."""
    from .. import __version__

    disks = []
    for d in cfg.disks:
        path = os.path.abspath(d.path)
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = -1
        disks.append({"path": path, "readonly": d.readonly, "serial": d.serial, "format": d.format,
                      "iops": d.iops, "bps": d.bps, "size": size, "mtime_ns": mtime})
    return {
        "pyvirt": __version__, "kind": kind, "created": created,
        "host": {"backend": backend, "tsc_khz": tsc_khz},
        "machine": {
            "memory": cfg.memory, "cpus": cfg.cpus, "cmdline": cfg.cmdline,
            "debug_exit_port": cfg.debug_exit_port, "pvm": "on" if pvm else "off",
            "kernel": os.path.abspath(cfg.kernel) if cfg.kernel else "",
            "initrd": os.path.abspath(cfg.initrd) if cfg.initrd else None,
            "disks": disks,
            "nets": [{"tap": n.tap, "mac": mac} for n, mac in zip(cfg.nets, macs)],
            "vsock": None if cfg.vsock is None else {"cid": cfg.vsock.cid, "socket": os.path.abspath(cfg.vsock.socket)},
            "rng": cfg.rng, "balloon": cfg.balloon, "console": cfg.console, "transport": cfg.transport,
        },
        "memory_regions": [[gpa, size] for gpa, size in regions],
        "compression": compression,
    }


class _Fields:
    """Typed access to one JSON object of the header, with errors naming the key."""

    def __init__(self, data: object, where: str, error: Callable[[str], SnapshotError]) -> None:
        if not isinstance(data, dict):
            raise error(f"{where} is not a JSON object")
        self.data, self.where, self.error = data, where, error

    def get(self, key: str, kind: type | tuple[type, ...], default: object = ...) -> object:
        if key not in self.data:
            if default is ...:
                raise self.error(f"{self.where} has no {key!r}")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise self.error(f"{self.where}.{key} has the wrong type ({type(value).__name__})")
        return value

    def int_(self, key: str, low: int = 0, high: int = (1 << 64) - 1) -> int:
        value = self.get(key, int)
        assert isinstance(value, int)
        if not low <= value <= high:
            raise self.error(f"{self.where}.{key} = {value} is out of range")
        return value

    def str_(self, key: str) -> str:
        value = self.get(key, str)
        assert isinstance(value, str)
        return value

    def bool_(self, key: str) -> bool:
        value = self.get(key, bool)
        assert isinstance(value, bool)
        return value


def config_from_header(snap: Snapshot) -> tuple[VmConfig, list[tuple[int, int]], dict[str, object]]:
    """The VmConfig to build (no kernel, no serial or API socket: the caller
    sets those), the RAM regions, and the disks' recorded (path, size, mtime)
    under "disks" with the host facts under "host"."""
    from .config import ConfigError, VmConfig
    from .device_config import DiskConfig, NetConfig, VsockConfig

    err = snap.error
    top = _Fields(snap.header(), CONFIG, err)
    m = _Fields(top.get("machine", dict), "config.machine", err)
    cfg = VmConfig(memory=m.int_("memory", 1, 1 << 52), cpus=m.int_("cpus", 1, 4096), cmdline=m.str_("cmdline"),
                   debug_exit_port=m.int_("debug_exit_port", 0, 0xFFFF), pvm=m.str_("pvm"),
                   rng=m.bool_("rng"), balloon=m.bool_("balloon"), console=m.str_("console"),
                   transport=m.str_("transport"))
    cfg.kernel = m.str_("kernel")
    initrd = m.get("initrd", (str, type(None)))
    cfg.initrd = initrd if isinstance(initrd, str) else None
    disks_seen = []
    raw_disks = m.get("disks", list)
    assert isinstance(raw_disks, list)
    for i, raw in enumerate(raw_disks):
        d = _Fields(raw, f"config.machine.disks[{i}]", err)
        cfg.disks.append(DiskConfig(d.str_("path"), d.bool_("readonly"), d.str_("serial"), d.str_("format"),
                                    d.int_("iops"), d.int_("bps")))
        disks_seen.append((d.str_("path"), d.get("size", int, -1), d.get("mtime_ns", int, -1)))
    raw_nets = m.get("nets", list)
    assert isinstance(raw_nets, list)
    for i, raw in enumerate(raw_nets):
        n = _Fields(raw, f"config.machine.nets[{i}]", err)
        cfg.nets.append(NetConfig(n.str_("tap"), n.str_("mac")))
    vsock = m.get("vsock", (dict, type(None)))
    if vsock is not None:
        v = _Fields(vsock, "config.machine.vsock", err)
        cfg.vsock = VsockConfig(v.int_("cid", 3, 0xFFFFFFFE), v.str_("socket"))
    if cfg.pvm not in ("on", "off"):
        raise err(f"config.machine.pvm {cfg.pvm!r} is not on or off")
    try:
        cfg.validate(require_kernel=False)
    except ConfigError as e:
        raise err(f"the saved configuration is not valid here: {e}") from e
    regions = []
    raw_regions = top.get("memory_regions", list)
    assert isinstance(raw_regions, list)
    for r in raw_regions:
        if not (isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r)):
            raise err("config.memory_regions must be [gpa, size] pairs")
        regions.append((r[0], r[1]))
    host = top.get("host", dict, {})
    return cfg, regions, {"disks": disks_seen, "host": host, "kind": top.get("kind", str, "save")}
