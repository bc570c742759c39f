"""Configuration of a VM's virtio devices: `--disk`, `--net`, `--vsock`,
`--rng`, `--balloon`, `--console virtio`, `--transport`.

Options use QEMU's `key=value,key=value` form. Loaded only when a VM has
devices, so a plain `pyvirt run` does not pay for it.
"""

from __future__ import annotations

import os

from .._record import Record
from .config import ConfigError

TRANSPORTS = ("pci", "mmio")


def parse_options(option: str, text: str, known: tuple[str, ...], first: str = "") -> dict[str, str]:
    """'path=a.img,readonly=on' -> {'path': 'a.img', 'readonly': 'on'}. A bare
    first item is taken as the value of `first` (so `--disk a.img` works)."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in text.split(",") if p):
        key, eq, value = item.partition("=")
        if not eq:
            if i == 0 and first:
                key, value = first, item
            else:
                raise ConfigError(f"{option} {text!r}: {item!r} is not key=value (keys: {', '.join(known)})")
        if key not in known:
            raise ConfigError(f"{option} {text!r}: unknown key {key!r} (keys: {', '.join(known)})")
        out[key] = value
    return out


def _flag(option: str, key: str, value: str) -> bool:
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"{option} {key}={value!r}: use on or off")


def parse_mac(text: str) -> bytes:
    """A unicast MAC address like 52:54:00:12:34:56, as bytes."""
    from ..devices.virtio.net import parse_mac as parse

    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(f"--net mac: {e}") from e


class DiskConfig(Record):
    __slots__ = __match_args__ = ("path", "readonly", "serial", "format", "iops", "bps")

    def __init__(self, path: str, readonly: bool = False, serial: str = "", format: str = "",
                 iops: int = 0, bps: int = 0) -> None:
        self.path = path
        self.readonly = readonly
        self.serial = serial
        self.format = format  # "" = detect
        self.iops = iops  # rate limit, requests per second (0 = none)
        self.bps = bps  # rate limit, bytes per second (0 = none)

    @classmethod
    def parse(cls, text: str) -> "DiskConfig":
        o = parse_options("--disk", text, ("path", "readonly", "serial", "format", "iops", "bps"), first="path")
        if not o.get("path"):
            raise ConfigError(f"--disk {text!r}: path= is required")
        if len(o.get("serial", "").encode()) > 20:
            raise ConfigError(f"--disk serial={o['serial']!r}: at most 20 bytes (virtio-blk's ID size)")
        try:
            iops, bps = int(o.get("iops", "0")), int(o.get("bps", "0"))
        except ValueError as e:
            raise ConfigError(f"--disk {text!r}: iops and bps are integers") from e
        return cls(o["path"], _flag("--disk", "readonly", o.get("readonly", "off")), o.get("serial", ""),
                   o.get("format", ""), iops, bps)

    def validate(self) -> None:
        if not os.path.exists(self.path):
            raise ConfigError(f"disk {self.path!r} does not exist (create it, e.g. truncate -s 1G {self.path})")


class NetConfig(Record):
    __slots__ = __match_args__ = ("tap", "mac")

    def __init__(self, tap: str, mac: str = "") -> None:
        self.tap = tap
        self.mac = mac

    @classmethod
    def parse(cls, text: str) -> "NetConfig":
        o = parse_options("--net", text, ("tap", "mac"), first="tap")
        if not o.get("tap"):
            raise ConfigError(f"--net {text!r}: tap=NAME is required")
        if len(o["tap"].encode()) > 15:
            raise ConfigError(f"--net tap={o['tap']!r}: interface names are at most 15 bytes")
        if o.get("mac"):
            parse_mac(o["mac"])
        return cls(o["tap"], o.get("mac", ""))


class VsockConfig(Record):
    __slots__ = __match_args__ = ("cid", "socket")

    def __init__(self, cid: int, socket: str) -> None:
        self.cid = cid
        self.socket = socket

    @classmethod
    def parse(cls, text: str) -> "VsockConfig":
        o = parse_options("--vsock", text, ("cid", "socket"))
        try:
            cid = int(o.get("cid", ""), 0)
        except ValueError as e:
            raise ConfigError(f"--vsock {text!r}: cid=N is required (3 or more)") from e
        if not 3 <= cid < 0xFFFF_FFFF:
            raise ConfigError(f"--vsock cid={cid}: guest CIDs start at 3 (0-2 are reserved)")
        if not o.get("socket"):
            raise ConfigError(f"--vsock {text!r}: socket=PATH is required")
        return cls(cid, o["socket"])


def default_mac(index: int) -> str:
    """A locally administered MAC, different per process and NIC."""
    pid = os.getpid()
    return f"52:54:{(pid >> 16) & 0xFF:02x}:{(pid >> 8) & 0xFF:02x}:{pid & 0xFF:02x}:{index & 0xFF:02x}"
