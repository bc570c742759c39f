"""`pyvirt vm migrate --api-socket S tcp:HOST:PORT`: start a live migration
through the VM's control API and follow it to the end.

The migration runs inside the VM process; this only starts it (PUT
/migrate), polls its progress (GET /migrate) and draws it: a live progress
bar on a terminal (rich), one line per round otherwise. Exit status 0 when
the VM runs on the destination, 1 when the migration failed or was
cancelled (the VM then runs on here).
"""

from __future__ import annotations

import json
import sys
import time

from .vm import ApiClient, ClientError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

POLL = 0.1  # seconds between progress requests
DONE = ("completed", "failed", "cancelled")


def request_body(args: argparse.Namespace) -> dict[str, object]:
    """The PUT /migrate body for the command's options."""
    from ..vmm.config import ConfigError, parse_size

    if not args.uri:
        raise ClientError("migrate needs the destination, e.g. tcp:10.0.0.2:4444 (or --cancel)")
    body: dict[str, object] = {"uri": args.uri, "downtime_ms": args.downtime, "max_rounds": args.max_rounds,
                               "auto_converge": args.auto_converge, "postcopy": args.postcopy}
    if getattr(args, "copy_disks", False):
        body["copy_disks"] = True
    if args.bandwidth:
        try:
            body["bandwidth"] = parse_size(args.bandwidth)
        except ConfigError as e:
            raise ClientError(f"--bandwidth {args.bandwidth!r} is not a size per second: use e.g. 100M") from e
    return body


def _mib(n: object) -> str:
    return f"{n / 2**20:.1f} MiB" if isinstance(n, (int, float)) else "?"


def describe(p: dict[str, object]) -> str:
    """One line about a progress record."""
    text = (f"{p.get('state')}: round {p.get('round')}, sent {_mib(p.get('transferred'))}, "
            f"remaining {_mib(p.get('remaining'))}, dirty {_mib(p.get('dirty_rate'))}/s, "
            f"link {_mib(p.get('bandwidth'))}/s")
    exp = p.get("expected_downtime")
    if isinstance(exp, (int, float)) and p.get("state") == "precopy":
        text += f", expected downtime {exp * 1000:.0f} ms"
    if p.get("throttle"):
        text += f", vCPUs throttled {float(p['throttle']) * 100:.0f}%"  # type: ignore[arg-type]
    return text


def follow(client: ApiClient, show: Callable[[dict[str, object]], None]) -> dict[str, object]:
    """Poll the migration until it ends; `show` sees every progress record."""
    while True:
        p = client.request("GET", "/migrate")
        show(p)
        if p.get("state") in DONE:
            return p
        time.sleep(POLL)


def _with_bar(client: ApiClient) -> dict[str, object]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("migrating", total=1, info="")

        def show(p: dict[str, object]) -> None:
            memory = p.get("memory") or 1
            remaining = p.get("remaining") or 0
            done = 1.0 if p.get("state") in ("completed", "postcopy") else max(0.0, 1 - remaining / memory)  # type: ignore[operator]
            bar.update(task, completed=done, description=str(p.get("state")), info=describe(p).split(": ", 1)[1])

        return follow(client, show)


def _with_lines(client: ApiClient) -> dict[str, object]:
    last: list[object] = [None]

    def show(p: dict[str, object]) -> None:
        key = (p.get("state"), p.get("round"))
        if key != last[0]:
            last[0] = key
            print(f"pyvirt: {describe(p)}", file=sys.stderr)

    return follow(client, show)


def cmd_migrate(args: argparse.Namespace, client: ApiClient) -> int:
    if args.cancel:
        reply = client.request("DELETE", "/migrate")
        print(json.dumps(reply, indent=2) if args.output == "json" else f"cancelling: {describe(reply)}")
        return 0
    client.request("PUT", "/migrate", request_body(args))
    if args.detach:
        print(f"migration to {args.uri} started; follow it with `pyvirt vm stats --api-socket {args.api_socket}`")
        return 0
    tty = sys.stderr.isatty() and args.output == "text"
    try:
        final = _with_bar(client) if tty else _with_lines(client)
    except ImportError:
        final = _with_lines(client)
    except ClientError as e:
        # The source VM ends after a successful migration: its socket goes away.
        raise ClientError(f"{e} (the VM may have moved: check the destination)") from e
    if args.output == "json":
        print(json.dumps(final, indent=2))
    elif final.get("state") == "completed":
        down = final.get("downtime")
        down_text = f"{down * 1000:.1f} ms" if isinstance(down, (int, float)) else "unknown"
        print(f"migrated to {args.uri} in {final.get('total_time')} s: {final.get('round')} rounds, "
              f"{_mib(final.get('transferred'))} sent, downtime {down_text}")
    else:
        print(f"pyvirt: migration {final.get('state')}: {final.get('error')}", file=sys.stderr)
    return 0 if final.get("state") == "completed" else 1
