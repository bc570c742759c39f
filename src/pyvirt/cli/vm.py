"""`pyvirt vm status|stats|pause|resume|stop|save|snapshot|balloon|migrate`: a client of a VM's
control API (docs/api.yaml) over its unix socket.

Only a client: every decision is the VM's, and its error message is what
the user sees. Exit status 0 on success, 1 on any error.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


class ClientError(Exception):
    """The request failed; the message is for the user."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the host name only fills the Host header)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        deadline = time.monotonic() + (self.timeout if self.timeout is not None else 30.0)
        try:
            while True:
                try:
                    sock.connect(self.socket_path)
                    break
                except BlockingIOError:
                    # A unix socket's connect with a timeout fails at once while
                    # the server's backlog is full, where TCP would wait.
                    if time.monotonic() >= deadline:
                        raise TimeoutError("the VM's API accepts no connection") from None
                    time.sleep(0.01)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Requests to one VM's API socket; each returns the decoded JSON reply."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        hint = f"is the VM running with --api-socket {self.path}?"
        conn = UnixHTTPConnection(self.path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
                reply = conn.getresponse()
                raw = reply.read()
            except FileNotFoundError as e:
                raise ClientError(f"no API socket at {self.path}: {hint}") from e
            except ConnectionRefusedError as e:
                raise ClientError(f"nothing listens on {self.path} (a VM that ended?): {hint}") from e
            except PermissionError as e:
                raise ClientError(f"no permission to connect to {self.path} (the VM's user owns it)") from e
            except TimeoutError as e:
                raise ClientError(f"no answer from {self.path} within {self.timeout:g} s") from e
            except (OSError, http.client.HTTPException) as e:
                raise ClientError(f"talking to {self.path}: {e or type(e).__name__}") from e
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ClientError(f"{method} {path}: the VM answered {reply.status} with something that is not "
                              f"a JSON object: {raw[:80]!r}")
        if reply.status != 200:
            raise ClientError(str(payload.get("error") or f"{method} {path}: HTTP {reply.status} {reply.reason}"))
        return payload


# --- output -------------------------------------------------------------------------

_SIZE_KEYS = {"memory", "target", "actual", "size"}


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def _flatten(value: object, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows: list[tuple[str, str]] = []
        for k, v in value.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = []
        for i, v in enumerate(value):
            rows += _flatten(v, f"{prefix}[{i}]")
        return rows
    if isinstance(value, list):
        return [(prefix, ", ".join(map(str, value)) or "none")]
    if isinstance(value, int) and not isinstance(value, bool) and prefix.rsplit(".", 1)[-1] in _SIZE_KEYS:
        return [(prefix, _size(value))]
    return [(prefix, str(value))]


def format_text(command: str, reply: dict[str, object]) -> str:
    """A reply as aligned `key  value` lines (nested keys joined with dots)."""
    reply = dict(reply)
    if command == "status":
        devices = reply.get("devices")
        if isinstance(devices, list):
            reply["devices"] = [f"{d.get('id')} ({d.get('type')}, {d.get('transport')})" if isinstance(d, dict)
                                else str(d) for d in devices]
        if isinstance(reply.get("uptime"), (int, float)):
            reply["uptime"] = f"{reply['uptime']:.1f} s"
    elif command == "stats" and isinstance(vcpus := reply.get("vcpus"), list):
        reply["vcpus"] = [f"{v.get('index')}: {v.get('state')}" if isinstance(v, dict) else str(v) for v in vcpus]
    rows = _flatten(reply)
    if not rows:
        return ""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


# --- the command --------------------------------------------------------------------

def _balloon_target(text: str) -> int:
    from ..vmm.config import ConfigError, parse_size

    try:
        return parse_size(text)
    except ConfigError as e:
        raise ClientError(f"balloon target {text!r} is not a size: use e.g. 64M, 1G or 0") from e


def cmd_vm(args: argparse.Namespace) -> int:
    command = args.vm_command
    timeout = args.timeout if args.timeout is not None else 600.0 if command in ("save", "snapshot", "restore") else 30.0
    client = ApiClient(args.api_socket, timeout)
    try:
        if command == "status":
            reply = client.request("GET", "/status")
        elif command == "stats":
            reply = client.request("GET", "/stats")
        elif command in ("pause", "resume", "stop"):
            reply = client.request("PUT", f"/{command}")
        elif command in ("save", "snapshot"):
            body: dict[str, object] = {"path": os.path.abspath(args.file)}
            if args.compress != "none":
                body["compression"] = args.compress
            if getattr(args, "disks", None):  # snapshot only; the VM's default is "overlay"
                body["disks"] = args.disks
            reply = client.request("PUT", f"/{command}", body)
        elif command == "restore":
            reply = client.request("PUT", "/restore", {"path": os.path.abspath(args.file)})
        elif command == "migrate":
            from .migrate import cmd_migrate

            return cmd_migrate(args, client)
        elif command == "balloon" and args.target is not None:
            reply = client.request("PUT", "/balloon", {"target": _balloon_target(args.target)})
        elif command == "balloon":
            reply = client.request("GET", "/balloon")
        else:
            raise ClientError(f"unknown vm command {command!r}")
    except ClientError as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(reply, indent=2))
    else:
        text = format_text(command, reply)
        if text:
            print(text)
    return 0
