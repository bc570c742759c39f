"""VM configuration: one record, filled from the command line or a JSON file.

Validation happens here, before anything touches /dev/kvm, so a bad setting
is reported with the setting's name and what to do instead.

`VmConfig` and `SerialConfig` are plain records (`pyvirt._record`), not
dataclasses, and sizes are parsed without `re`: this module is on the start
path of every `pyvirt run`.
"""

from __future__ import annotations

import os

from .._record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .device_config import DiskConfig, NetConfig, VsockConfig

PAGE_SIZE = 4096
UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1: room for the path and its NUL


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


# A size is digits, optional blanks, an optional unit k/m/g/t, an optional "b" or
# "ib", case-insensitively, with blanks around: the regular expression
#     ^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$   (re.IGNORECASE)
# which `_split_size` implements for ASCII text and `re` still serves otherwise.
_SIZE_RE = r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$"
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _split_size(text: str) -> tuple[str, str] | None:
    """(digits, unit) of a size, or None if `text` is not one."""
    if not text.isascii():
        import re

        m = re.match(_SIZE_RE, text, re.IGNORECASE)
        return (m.group(1), m.group(2)) if m else None
    rest = text.strip().lower()
    n = len(rest) - len(rest.lstrip("0123456789"))
    digits, rest = rest[:n], rest[n:].lstrip()
    unit = rest[:1] if rest[:1] in ("k", "m", "g", "t") else ""
    if not digits or rest[len(unit):] not in ("", "b", "ib"):
        return None
    return digits, unit


def parse_size(text: "str | int", default_unit: str = "m") -> int:
    """'128M', '1G', '512' (MiB, as QEMU's -m) → bytes."""
    if isinstance(text, int):
        return text << 20 if default_unit == "m" else text
    parts = _split_size(str(text))
    if parts is None:
        raise ConfigError(f"memory size {text!r} is not a size: use e.g. 128M, 1G or 512 (MiB)")
    n, unit = int(parts[0]), parts[1].lower()
    return n * (_UNITS[unit] if unit else _UNITS[default_unit])


class SerialConfig(Record):
    """Where COM1 goes: the terminal, a file, a unix socket, or nowhere."""

    __slots__ = __match_args__ = ("kind", "path")

    def __init__(self, kind: str = "stdio", path: str = "") -> None:
        self.kind = kind  # stdio | file | socket | null
        self.path = path

    @classmethod
    def parse(cls, text: str) -> "SerialConfig":
        if text in ("stdio", "null", "none"):
            return cls("null" if text == "none" else text)
        kind, _, path = text.partition(":")
        if kind in ("file", "socket") and path:
            return cls(kind, path)
        raise ConfigError(f"--serial {text!r}: use stdio, null, file:PATH or socket:PATH")


class VmConfig(Record):
    __slots__ = __match_args__ = ("kernel", "initrd", "cmdline", "memory", "cpus", "serial", "debug_exit_port", "pvm",
                                  "disks", "nets", "vsock", "rng", "balloon", "console", "transport", "api_socket")

    def __init__(self, kernel: str = "", initrd: str | None = None, cmdline: str = "", memory: int = 128 << 20,
                 cpus: int = 1, serial: SerialConfig | None = None, debug_exit_port: int = 0xF4,
                 pvm: str = "auto", disks: list[DiskConfig] | None = None, nets: list[NetConfig] | None = None,
                 vsock: VsockConfig | None = None,
                 rng: bool = False, balloon: bool = False, console: str = "serial", transport: str = "pci",
                 api_socket: str | None = None) -> None:
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.memory = memory
        self.cpus = cpus
        self.serial = serial if serial is not None else SerialConfig()
        self.debug_exit_port = debug_exit_port
        self.pvm = pvm  # auto | on | off: the kvm_pvm compatibility layer
        # virtio devices (vmm/device_config.py records), loaded only when used
        self.disks: list[DiskConfig] = disks if disks is not None else []
        self.nets: list[NetConfig] = nets if nets is not None else []
        self.vsock = vsock  # VsockConfig | None
        self.rng = rng
        self.balloon = balloon
        self.console = console  # serial | virtio (the serial port then carries only early output)
        self.transport = transport  # pci | mmio
        self.api_socket = api_socket  # unix socket path of the control API (docs/api.yaml), or None

    @property
    def has_virtio(self) -> bool:
        return bool(self.disks or self.nets or self.vsock or self.rng or self.balloon or self.console == "virtio")

    def validate(self, require_kernel: bool = True) -> None:
        """ConfigError naming the first bad setting. A restored VM
        (`require_kernel=False`) boots no kernel: its memory holds one."""
        if require_kernel and not self.kernel:
            raise ConfigError("no kernel: pass --kernel FILE (or \"kernel\" in the config file)")
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if require_kernel and path is not None and not os.path.isfile(path):
                raise ConfigError(f"{what} {path!r} does not exist or is not a file")
        if self.memory <= 0 or self.memory % PAGE_SIZE:
            raise ConfigError(f"memory {self.memory} bytes is not a positive multiple of the 4 KiB page size")
        if self.memory < 2 << 20:
            raise ConfigError("memory must be at least 2 MiB")
        if not 1 <= self.cpus <= 4096:
            raise ConfigError(f"cpus {self.cpus}: must be between 1 and the host's KVM_CAP_MAX_VCPUS")
        if not 0 <= self.debug_exit_port <= 0xFFFF:
            raise ConfigError(f"debug-exit port {self.debug_exit_port:#x} is not an I/O port")
        if self.pvm not in ("auto", "on", "off"):
            raise ConfigError(f"pvm {self.pvm!r}: use auto, on or off")
        if self.console not in ("serial", "virtio"):
            raise ConfigError(f"console {self.console!r}: use serial or virtio")
        if self.transport not in ("pci", "mmio"):
            raise ConfigError(f"transport {self.transport!r}: use pci or mmio")
        for disk in self.disks:
            disk.validate()
        if self.api_socket is not None:
            if not isinstance(self.api_socket, str) or not self.api_socket:
                raise ConfigError(f"api_socket {self.api_socket!r}: give a path for the control API's unix socket")
            if len(os.fsencode(self.api_socket)) > UNIX_PATH_MAX:
                raise ConfigError(f"api socket path {self.api_socket!r} is longer than the {UNIX_PATH_MAX} bytes "
                                  "a unix socket address holds: choose a shorter one")

    @classmethod
    def from_file(cls, path: str) -> "VmConfig":
        try:
            import json  # only needed for --config; keeps `pyvirt run` start-up lean

            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except ValueError as e:  # json.JSONDecodeError
            raise ConfigError(f"config file {path} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a JSON object")
        return cls.from_dict(data, base=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def from_dict(cls, data: dict, base: str | None = None) -> "VmConfig":
        known = set(cls.__match_args__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        cfg = cls()
        for key, value in data.items():
            if key == "memory":
                value = parse_size(value)
            elif key == "serial":
                value = SerialConfig.parse(value) if isinstance(value, str) else SerialConfig(**value)
            elif key in ("kernel", "initrd") and value and base is not None and not os.path.isabs(value):
                value = os.path.join(base, value)
            elif key in ("cpus", "debug_exit_port") and not isinstance(value, int):
                raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
            elif key in ("disks", "nets", "vsock"):
                value = _device_configs(key, value, base)
            elif key in ("rng", "balloon") and not isinstance(value, bool):
                raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
            elif key == "api_socket" and value is not None:
                if not isinstance(value, str):
                    raise ConfigError(f"config key 'api_socket' must be a path, got {value!r}")
                if value and base is not None and not os.path.isabs(value):
                    value = os.path.join(base, value)
            setattr(cfg, key, value)
        return cfg


def _device_configs(key: str, value: object, base: str | None) -> object:
    """`disks`/`nets` (lists) and `vsock` from a config file: each item is
    either the command line's option string or an object with its keys."""
    from .device_config import DiskConfig, NetConfig, VsockConfig

    kind: type[DiskConfig | NetConfig | VsockConfig] = {"disks": DiskConfig, "nets": NetConfig,
                                                          "vsock": VsockConfig}[key]

    def one(item: object) -> object:
        if isinstance(item, str):
            text = item
        elif isinstance(item, dict):
            text = ",".join(f"{k}={'on' if v is True else 'off' if v is False else v}" for k, v in item.items())
        else:
            raise ConfigError(f"config key {key!r}: expected an option string or an object, got {item!r}")
        cfg = kind.parse(text)
        if isinstance(cfg, DiskConfig) and base is not None and not os.path.isabs(cfg.path):
            cfg.path = os.path.join(base, cfg.path)
        return cfg

    if key == "vsock":
        return None if value is None else one(value)
    if not isinstance(value, list):
        raise ConfigError(f"config key {key!r} must be a list")
    return [one(v) for v in value]
