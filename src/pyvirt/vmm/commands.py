"""Control API requests as command objects: parsed, validated, then executed.

`parse_request(method, path, body)` turns an HTTP request into one of the
`Command` classes below, or raises `RequestError` with the HTTP status to
answer (404 unknown path, 405 wrong method, 400 anything malformed). Only a
fully validated command reaches the VM: `command.execute(vm)` calls one
`VmControl` method and returns the JSON reply.

Nothing here knows about sockets or HTTP framing (that is `api.py`), so
every rule is tested with plain calls. A new action is one class with
`@route`, its `VmControl` method and its path in docs/api.yaml (a unit test
checks that the spec and `ROUTES` agree).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from .control import VmControl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..migration.source import MigrationOptions

PAGE_SIZE = 4096


class RequestError(ValueError):
    """A request the API does not accept; `status` is the HTTP status to
    answer, `allow` the methods the path does accept (for 405's Allow)."""

    def __init__(self, message: str, status: int = 400, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.allow = allow


class Command:
    """One validated API request. Subclasses set `method` and `path`, list
    their body fields with their JSON types in `fields`, and implement
    `execute`; the default `from_body` passes the checked fields to the
    constructor as keywords."""

    method: ClassVar[str] = ""
    path: ClassVar[str] = ""
    fields: ClassVar[dict[str, type]] = {}

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        return cls(**check_fields(body, cls.fields, f"{cls.method} {cls.path}"))

    def execute(self, vm: VmControl) -> dict[str, object]:
        raise NotImplementedError


# path -> method -> command class
ROUTES: dict[str, dict[str, type[Command]]] = {}


def route(cls: type[Command]) -> type[Command]:
    """Class decorator: serve `cls.method cls.path` with `cls`."""
    methods = ROUTES.setdefault(cls.path, {})
    if cls.method in methods:
        raise ValueError(f"{cls.method} {cls.path} is served by {methods[cls.method].__name__} already")
    methods[cls.method] = cls
    return cls


def _type_name(t: type) -> str:
    return {int: "an integer", str: "a string", bool: "true or false", float: "a number",
            list: "an array", dict: "an object"}.get(t, t.__name__)


def check_fields(body: dict[str, object], fields: dict[str, type], where: str) -> dict[str, object]:
    """`body`'s fields after checking that each is known and of its type."""
    unknown = sorted(set(body) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields)) if fields else "none"
        raise RequestError(f"{where}: unknown field {', '.join(map(repr, unknown))} (fields: {known})")
    for name, value in body.items():
        want = fields[name]
        # bool is an int to Python, not to JSON: `true` is no size.
        ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise RequestError(f"{where}: field {name!r} must be {_type_name(want)}, got {json.dumps(value)[:40]}")
    return dict(body)


def _reject_constant(name: str) -> object:
    raise RequestError(f"{name} is not valid JSON")


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(f"field {key!r} given twice")
        out[key] = value
    return out


def parse_body(body: bytes) -> dict[str, object]:
    """A request body as a JSON object; no body is an empty object."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant,
                           object_pairs_hook=_object_without_duplicates)
    except UnicodeDecodeError as e:
        raise RequestError("the body is not UTF-8 text") from e
    except json.JSONDecodeError as e:
        raise RequestError(f"the body is not valid JSON: {e}") from e
    except RecursionError as e:  # `[[[[...` nested deeper than the parser goes
        raise RequestError("the body is not valid JSON: nested too deeply") from e
    if not isinstance(value, dict):
        raise RequestError(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def find_command(method: str, target: str) -> type[Command]:
    """The command class serving `method target` (before its body is read),
    or RequestError: 404 unknown path, 405 wrong method, 400 a query string."""
    path, _, query = target.partition("?")
    methods = ROUTES.get(path)
    if methods is None:
        raise RequestError(f"no such path {path!r} (paths: {', '.join(sorted(ROUTES))})", status=404)
    cls = methods.get(method)
    if cls is None:
        allow = tuple(sorted(methods))
        raise RequestError(f"{method} is not allowed on {path} (use {', '.join(allow)})", status=405, allow=allow)
    if query:
        raise RequestError(f"{path} takes no query parameters")
    return cls


def parse_request(method: str, target: str, body: bytes) -> Command:
    """The command for `method target` with `body`, or RequestError."""
    return find_command(method, target).from_body(parse_body(body))


# --- the commands ---------------------------------------------------------------

@route
@dataclass(frozen=True)
class GetStatus(Command):
    method = "GET"
    path = "/status"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.status()


@route
@dataclass(frozen=True)
class GetStatistics(Command):
    method = "GET"
    path = "/stats"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.statistics()


@route
@dataclass(frozen=True)
class Pause(Command):
    method = "PUT"
    path = "/pause"

    def execute(self, vm: VmControl) -> dict[str, object]:
        vm.pause()
        return {"state": "paused"}


@route
@dataclass(frozen=True)
class Resume(Command):
    method = "PUT"
    path = "/resume"

    def execute(self, vm: VmControl) -> dict[str, object]:
        vm.resume()
        return {"state": "running"}


@route
@dataclass(frozen=True)
class Stop(Command):
    method = "PUT"
    path = "/stop"

    def execute(self, vm: VmControl) -> dict[str, object]:
        vm.stop()
        return {"state": "stopped"}


@route
@dataclass(frozen=True)
class GetBalloon(Command):
    method = "GET"
    path = "/balloon"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.balloon_info()


@route
@dataclass(frozen=True)
class SetBalloon(Command):
    """Body {"target": bytes} or {"target_mib": MiB}: the balloon's size."""

    method = "PUT"
    path = "/balloon"
    fields = {"target": int, "target_mib": int}
    target: int

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        where = f"{cls.method} {cls.path}"
        values = check_fields(body, cls.fields, where)
        if len(values) != 1:
            raise RequestError(f"{where}: give exactly one of \"target\" (bytes) and \"target_mib\"")
        (name, value), = values.items()
        assert isinstance(value, int)
        if value < 0:
            raise RequestError(f"{where}: {name} must not be negative")
        target = value << 20 if name == "target_mib" else value
        if target % PAGE_SIZE:
            raise RequestError(f"{where}: target {target} is not a multiple of the 4 KiB balloon page")
        return cls(target=target)

    def execute(self, vm: VmControl) -> dict[str, object]:
        vm.balloon_set(self.target)
        return vm.balloon_info()


@dataclass(frozen=True)
class _WriteState(Command):
    """Body {"path": absolute path, "compression": "none"|"zstd"|"lz4"}."""

    method = "PUT"
    fields = {"path": str, "compression": str}
    file: str
    compression: str = "none"

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        where = f"{cls.method} {cls.path}"
        values = check_fields(body, cls.fields, where)
        path = values.get("path")
        if not isinstance(path, str) or not path:
            raise RequestError(f"{where}: \"path\" (the snapshot file to write) is required")
        if not path.startswith("/"):
            raise RequestError(f"{where}: path {path!r} must be absolute (the VMM's working directory is not yours)")
        if "\0" in path:
            raise RequestError(f"{where}: path contains a NUL byte")
        compression = values.get("compression", "none")
        from .snapshot import available_codecs

        codecs = available_codecs()
        if compression not in codecs:
            raise RequestError(f"{where}: compression {compression!r} is not available (use {', '.join(codecs)})")
        return cls(file=path, compression=str(compression))


@route
@dataclass(frozen=True)
class Save(_WriteState):
    path = "/save"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.save(self.file, self.compression)


@route
@dataclass(frozen=True)
class Snapshot(_WriteState):
    """The body of /save, and "disks": "overlay" (default), "internal" or "none"."""

    path = "/snapshot"
    fields = {**_WriteState.fields, "disks": str}
    disks: str = "overlay"

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        from .disk_snapshot import MODES

        where = f"{cls.method} {cls.path}"
        disks = check_fields(body, cls.fields, where).get("disks", "overlay")
        if disks not in MODES:
            raise RequestError(f"{where}: disks {disks!r} is not a disk snapshot method (use {', '.join(MODES)})")
        cmd = super().from_body({k: v for k, v in body.items() if k != "disks"})
        assert isinstance(cmd, Snapshot)
        return cls(file=cmd.file, compression=cmd.compression, disks=str(disks))

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.snapshot(self.file, self.compression, self.disks)


@route
@dataclass(frozen=True)
class StartMigration(Command):
    """Body {"uri": "tcp:HOST:PORT", "downtime_ms", "max_rounds", "auto_converge",
    "postcopy", "bandwidth" (bytes/s, 0: unlimited), "copy_disks"}; only uri is required."""

    method = "PUT"
    path = "/migrate"
    fields = {"uri": str, "downtime_ms": float, "max_rounds": int, "auto_converge": bool, "postcopy": bool,
              "bandwidth": int, "copy_disks": bool}
    uri: str
    downtime_ms: float = 50.0
    max_rounds: int = 30
    auto_converge: bool = True
    postcopy: bool = False
    bandwidth: int = 0
    copy_disks: bool = False

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        where = f"{cls.method} {cls.path}"
        values = check_fields(body, cls.fields, where)
        if "uri" not in values:
            raise RequestError(f"{where}: \"uri\" (tcp:HOST:PORT of `pyvirt run --incoming`) is required")
        cmd = cls(**values)  # type: ignore[arg-type]
        from ..migration.source import MigrationOptions

        try:
            cmd.options().check()
        except ValueError as e:
            raise RequestError(f"{where}: {e}") from e
        return cmd

    def options(self) -> MigrationOptions:
        from ..migration.source import MigrationOptions

        return MigrationOptions(uri=self.uri, downtime_limit=self.downtime_ms / 1000, max_rounds=self.max_rounds,
                                auto_converge=self.auto_converge, postcopy=self.postcopy, bandwidth=self.bandwidth,
                                copy_disks=self.copy_disks)

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.migrate(self.options())


@route
@dataclass(frozen=True)
class GetMigration(Command):
    method = "GET"
    path = "/migrate"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.migration()


@route
@dataclass(frozen=True)
class CancelMigration(Command):
    method = "DELETE"
    path = "/migrate"

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.migrate_cancel()


@route
@dataclass(frozen=True)
class Restore(Command):
    """Body {"path": absolute path of a snapshot file}: for a `pyvirt restore
    --api-socket` started without a file."""

    method = "PUT"
    path = "/restore"
    fields = {"path": str}
    file: str

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Command:
        where = f"{cls.method} {cls.path}"
        path = check_fields(body, cls.fields, where).get("path")
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise RequestError(f"{where}: \"path\" must be the snapshot file's absolute path")
        return cls(file=path)

    def execute(self, vm: VmControl) -> dict[str, object]:
        return vm.restore(self.file)
