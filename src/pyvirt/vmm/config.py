"""VM configuration: one dataclass, filled from the command line or a JSON file.

Validation happens here, before anything touches /dev/kvm, so a bad setting
is reported with the setting's name and what to do instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

PAGE_SIZE = 4096


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: "str | int", default_unit: str = "m") -> int:
    """'128M', '1G', '512' (MiB, as QEMU's -m) → bytes."""
    if isinstance(text, int):
        return text << 20 if default_unit == "m" else text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"memory size {text!r} is not a size: use e.g. 128M, 1G or 512 (MiB)")
    n, unit = int(m.group(1)), m.group(2).lower()
    return n * (_UNITS[unit] if unit else _UNITS[default_unit])


@dataclass
class SerialConfig:
    """Where COM1 goes: the terminal, a file, a unix socket, or nowhere."""

    kind: str = "stdio"  # stdio | file | socket | null
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "SerialConfig":
        if text in ("stdio", "null", "none"):
            return cls("null" if text == "none" else text)
        kind, _, path = text.partition(":")
        if kind in ("file", "socket") and path:
            return cls(kind, path)
        raise ConfigError(f"--serial {text!r}: use stdio, null, file:PATH or socket:PATH")


@dataclass
class VmConfig:
    kernel: str = ""
    initrd: str | None = None
    cmdline: str = ""
    memory: int = 128 << 20
    cpus: int = 1
    serial: SerialConfig = field(default_factory=SerialConfig)
    debug_exit_port: int = 0xF4
    pvm: str = "auto"  # auto | on | off: the kvm_pvm compatibility layer

    def validate(self) -> None:
        if not self.kernel:
            raise ConfigError("no kernel: pass --kernel FILE (or \"kernel\" in the config file)")
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if path is not None and not os.path.isfile(path):
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
        known = {f.name for f in fields(cls)}
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
            setattr(cfg, key, value)
        return cfg
