#!/usr/bin/env python3
"""Save, restore and live migration: pyvirt against QEMU microvm, same guest, one run.

    .venv/bin/python benchmarks/migration_bench.py            # or: benchmarks/run.py --migration
    .venv/bin/python benchmarks/migration_bench.py --quick    # one restore per size, one migration per rate

The guest is the guest kit's `dirty` in rate mode (guests/build/dirty.elf,
built with `make -s -C guests` if missing; guests/dirty.c): it fills an area
of `pages` 4 KiB pages spread over its RAM, rewrites `rate` MiB/s of it,
prints `dirty: second S written N sum X` once a second and answers `v` on
COM1 with `dirty: VERIFY OK` after checking every word of the area (any page
lost or stale: `dirty: FAIL`). Every VM gets its COM1 on a unix socket
(pyvirt `--serial socket:P`, QEMU `-serial unix:P,server=on,wait=off`) and
QEMU its QMP on another. One VM at a time, except the two ends of a migration.

1. Save and restore, 256 MiB and 1 GiB guests, `rate=10 spread`, the area half
   of RAM (32768 and 131072 pages). Once the guest has printed `second 1`:

   pyvirt   `pyvirt vm save --api-socket S FILE -o json`: the reply's `seconds`
            (pause, capture, write, fsync) and the command's wall time; the file
            size. Then `--reps` times `pyvirt -v restore FILE --serial socket:..`:
            the restore's own time (its log line "restored FILE in X ms", from
            opening the file to a machine ready to run), and from spawning the
            process: that line, the first serial line, and `VERIFY OK` (`v` is
            sent as soon as the line came).
   QEMU     over QMP `stop`, then `migrate exec:cat > FILE` (as `virsh save`
            does: paused first; max-bandwidth unlimited), until `query-migrate`
            says completed; then the time to fsync the file (pyvirt's save
            includes one); the file size. Restores: `qemu ... -incoming defer`,
            then `migrate-incoming exec:cat FILE` as soon as QMP answers; the VM
            was saved paused, so it arrives paused: `cont` on the MIGRATION
            completed event (as libvirt does); the RESUME event is "running"
            (spawn -> RESUME, and migrate-incoming -> RESUME as QEMU's own
            restore time), then `v` and `VERIFY OK` as above.

   The guest prints a line only once a second, so "first serial line" is bounded
   by that cadence (it is whatever comes first: the next `second` line or the
   answer to `v`); `VERIFY OK` is the figure that says the restored guest runs
   and its memory is all there. pyvirt maps guest memory from the file, so its
   VERIFY pays for loading the area's pages on first touch; QEMU read all of it
   before RESUME.

2. Live migration on 127.0.0.1, 256 MiB guest, rate 0, 50 and 200 MiB/s, the
   area 16384 pages (64 MiB) at 0 and 50, 49152 pages (192 MiB) at 200 so that
   the writes keep hitting distinct pages for about a second. The migration
   starts after the guest's `second 2` line; the pages it wrote between
   `second 1` and `second 2` are shown as its write rate (is it really 200?).

   pyvirt   destination `pyvirt -v run --incoming tcp:127.0.0.1:PORT`, source
            `pyvirt vm migrate --api-socket S tcp:127.0.0.1:PORT --downtime 50 -o json`
            (defaults otherwise: auto-converge on, no bandwidth cap); figures from
            its final record: total_time, downtime (the guest's pause, up to the
            destination's start: switchover_ms has the parts), round, transferred.
   QEMU     destination `-incoming tcp:127.0.0.1:PORT`; on the source over QMP
            auto-converge on (as pyvirt's default), downtime-limit 50,
            max-bandwidth unlimited (QEMU's default caps it at 128 MiB/s, which
            a 200 MiB/s guest never beats), `migrate`, `query-migrate` every
            50 ms until completed (or `--migrate-timeout` s, then migrate_cancel):
            total-time, downtime, ram.dirty-sync-count (rounds: QEMU counts the
            first sync too), ram.transferred. QEMU's `downtime` is measured by the
            source and ends when it has sent everything; the guest's real pause
            is from the source's STOP event to the destination's RESUME event
            (both QMP timestamps), shown beside it and used for the ratio.

   After each migration the destination's guest gets `v` and must answer
   `VERIFY OK` (pyvirt and QEMU alike). `--reps` migrations per rate (3), the
   two VMMs taking turns; the table has the medians and (min-max).

3. A table with pyvirt, QEMU, the ratio pyvirt / QEMU and the targets:
   restore to first instruction <= 20 ms whatever the memory size (the
   restore's own time: the interpreter's start is not part of it, the
   spawn -> running figure beside it is), downtime <= 50 ms at 50 MiB/s,
   total migration time <= 1.0x QEMU.

Writes benchmarks/results/migration-latest.json. Never fails on a timing, nor
on what QEMU cannot do (such a row says why); the exit status is 1 when a
pyvirt figure could not be measured or a guest failed its check. Every
process it starts is stopped by pid at the end, whatever happens, and its
temporary directory (sockets, snapshot files) removed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402  (host_info, table, ensure_qemu, cpu_times, steal_fraction, log)

ROOT = common.ROOT
RESULTS = common.RESULTS
GUEST = ROOT / "guests" / "build" / "dirty.elf"
GUEST_EXIT_0 = 1  # the guest's exit(0) through the debug-exit port: (0 << 1) | 1

SAVE_CASES = (("256M", 32768), ("1G", 131072))  # memory, pages: the area is half of RAM
SAVE_RATE = 10  # MiB/s
MIGRATION_MEMORY = "256M"
MIGRATION_CASES = ((0, 16384), (50, 16384), (200, 49152))  # rate MiB/s, pages
DOWNTIME_MS = 50

TARGET_RESTORE_MS = 20.0
TARGET_DOWNTIME_MS = 50.0  # at 50 MiB/s
TARGET_TOTAL_RATIO = 1.0

BOOT_TIMEOUT = 120.0  # seconds from spawn to the guest's `second 1` line
STEP_TIMEOUT = 60.0  # seconds for anything else a VM should do soon (a verify, a restore, an exit)
QEMU_UNLIMITED = 1 << 40  # bytes/s: "no cap" for max-bandwidth

SECOND = r"dirty: second (\d+) written (\d+) sum"
VERIFY = r"dirty: (VERIFY OK \d+ written \d+|FAIL[^\r\n]*)"
RESTORED = re.compile(r"restored .* in ([0-9.]+) ms")

log = common.log


class BenchError(Exception):
    """A figure that could not be measured; the message says why."""


def pyvirt_argv() -> tuple[list[str], dict[str, str]]:
    venv = ROOT / ".venv" / "bin" / "pyvirt"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return ([str(venv)] if venv.exists() else [sys.executable, "-m", "pyvirt"]), env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, pred: Callable[[], Any], timeout: float, proc: Proc | None = None,
               interval: float = 0.005) -> Any:
    """Poll `pred` until it returns something true; BenchError after `timeout` or when `proc` ends."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} ended (status {proc.popen.returncode}) while waiting for {what}\n"
                             f"stderr:\n{proc.stderr_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}"
                             + (f"\n{proc.name} stderr:\n{proc.stderr_tail()}" if proc else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------- processes

class Proc:
    """A started VMM process; its stderr is read on a thread, each line with its arrival time."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name, self.argv = name, argv
        self.t0 = time.perf_counter()
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, env=env, cwd=ROOT)
        self.lines: list[tuple[float, str]] = []  # (seconds since spawn, stderr line)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            with self._lock:
                self.lines.append((time.perf_counter() - self.t0, raw.decode(errors="replace").rstrip()))

    def find(self, pattern: re.Pattern[str] | str) -> tuple[float, re.Match[str]] | None:
        with self._lock:
            lines = list(self.lines)
        for t, text in lines:
            m = re.search(pattern, text)
            if m:
                return t, m
        return None

    def stderr_tail(self, n: int = 12) -> str:
        with self._lock:
            return "\n".join(text for _, text in self.lines[-n:]) or "(empty)"

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; the exit status."""
        p = self.popen
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._reader.join(timeout=2)
        if p.stderr:
            p.stderr.close()
        return p.returncode

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


class Procs:
    """Every process the benchmark starts, so that each one is stopped (by pid) whatever happens."""

    def __init__(self) -> None:
        self.started: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, argv, env)
        self.started.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.started:
            p.stop(grace=2.0)
        self.started.clear()


class UnixClient:
    """A client of a VMM's unix socket (connected once the VMM has made it) with a reader thread."""

    sock: socket.socket
    _reader: threading.Thread

    def _connect_to(self, path: str, what: str, proc: Proc, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def connect() -> bool:
            try:
                self.sock.connect(path)
            except (FileNotFoundError, ConnectionRefusedError):
                return False
            return True

        wait_until(f"{proc.name}'s {what}", connect, timeout, proc)

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._reader.join(timeout=2)


class Serial(UnixClient):
    """Client end of a VM's COM1 socket: received lines with arrival times, bytes to send."""

    def __init__(self, path: str, proc: Proc, timeout: float = STEP_TIMEOUT) -> None:
        self.t0, self.path = proc.t0, path
        self.lines: list[tuple[float, str]] = []  # (seconds since the VMM's spawn, line)
        self._partial = b""
        self._lock = threading.Lock()
        self._connect_to(path, "serial socket", proc, timeout)
        self._start_reader()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            t = time.perf_counter() - self.t0
            with self._lock:
                *complete, self._partial = (self._partial + data).split(b"\n")
                self.lines += [(t, raw.decode(errors="replace").rstrip("\r")) for raw in complete]

    def wait_line(self, pattern: str, timeout: float, proc: Proc, after: float = -1.0) -> tuple[float, re.Match[str]]:
        """The first line matching `pattern` that arrived after `after` (seconds since spawn)."""
        def seen() -> tuple[float, re.Match[str]] | None:
            with self._lock:
                lines = list(self.lines)
            for t, text in lines:
                m = re.search(pattern, text)
                if m and t > after:
                    return t, m
            return None

        return wait_until(f"{pattern!r} on {proc.name}'s serial", seen, timeout, proc, interval=0.002)

    def first_line_after(self, after: float) -> float | None:
        with self._lock:
            return next((t for t, text in self.lines if t > after and text.strip()), None)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class QmpError(Exception):
    pass


class Qmp(UnixClient):
    """A QMP client on QEMU's unix socket; events are kept with their arrival times."""

    def __init__(self, path: str, proc: Proc, timeout: float = STEP_TIMEOUT) -> None:
        self.proc = proc
        self._connect_to(path, "QMP socket", proc, timeout)
        self.file = self.sock.makefile("rb")
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[tuple[float, dict[str, Any]]] = []  # (seconds since spawn, event)
        self._lock = threading.Lock()
        self._start_reader()
        self._greeting = self.replies.get(timeout=timeout)
        self.execute("qmp_capabilities")

    def _read(self) -> None:
        while True:
            try:
                raw = self.file.readline()
            except OSError:  # QEMU went away (quit, or stopped at the end)
                raw = b""
            if not raw:
                break
            t = time.perf_counter() - self.proc.t0
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if "event" in msg:
                with self._lock:
                    self.events.append((t, msg))
            else:
                self.replies.put(msg)
        self.replies.put({"error": {"desc": "QMP connection closed"}})

    def execute(self, cmd: str, timeout: float = STEP_TIMEOUT, **args: Any) -> Any:
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise QmpError(f"{cmd}: no reply in {timeout:.0f} s") from None
        if "error" in reply:
            raise QmpError(f"{cmd}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def event(self, name: str, status: tuple[str, ...] = ()) -> tuple[float, dict[str, Any]] | None:
        """The first event `name` (with one of these data.status values, if given)."""
        with self._lock:
            return next(((t, e) for t, e in self.events if e.get("event") == name
                         and (not status or e.get("data", {}).get("status") in status)), None)

    def wait_event(self, name: str, timeout: float) -> tuple[float, dict[str, Any]]:
        return wait_until(f"QMP event {name} from {self.proc.name}", lambda: self.event(name), timeout, self.proc,
                          interval=0.001)



def event_time(e: dict[str, Any]) -> float:
    ts = e.get("timestamp", {})
    return ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, qemu: str | None, qemu_cpu: str | None) -> None:
        self.args, self.tmp = args, tmp
        self.qemu, self.qemu_cpu = qemu, qemu_cpu
        self.pyvirt, self.env = pyvirt_argv()
        self.procs = Procs()
        self._n = 0

    def path(self, name: str) -> str:
        self._n += 1
        return str(self.tmp / f"{self._n}-{name}")

    def pyvirt_cli(self, args: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(self.pyvirt + args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               env=self.env, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"pyvirt {' '.join(args)}: no answer in {timeout:.0f} s") from None
        return p, time.perf_counter() - t0

    def qemu_argv(self, memory: str, cmdline: str, qmp: str, serial: str, incoming: str | None = None) -> list[str]:
        assert self.qemu is not None
        argv = [self.qemu, "-M", "microvm,accel=kvm", *(["-cpu", self.qemu_cpu] if self.qemu_cpu else []),
                "-m", memory, "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(GUEST), "-append", cmdline,
                "-qmp", f"unix:{qmp},server=on,wait=off", "-serial", f"unix:{serial},server=on,wait=off"]
        return argv + (["-incoming", incoming] if incoming else [])

    # --- a running guest ---------------------------------------------------------------
    def boot_pyvirt(self, memory: str, cmdline: str) -> tuple[Proc, Serial, str]:
        api, ser = self.path("api.sock"), self.path("serial.sock")
        proc = self.procs.spawn("pyvirt (source)", self.pyvirt + [
            "run", "--kernel", str(GUEST), "--memory", memory, "--cmdline", cmdline,
            "--serial", f"socket:{ser}", "--api-socket", api], self.env)
        serial = Serial(ser, proc)
        serial.wait_line(SECOND, BOOT_TIMEOUT, proc)
        return proc, serial, api

    def boot_qemu(self, memory: str, cmdline: str, name: str = "QEMU (source)") -> tuple[Proc, Serial, Qmp]:
        qmp_path, ser = self.path("qmp.sock"), self.path("serial.sock")
        proc = self.procs.spawn(name, self.qemu_argv(memory, cmdline, qmp_path, ser))
        qmp = Qmp(qmp_path, proc)
        serial = Serial(ser, proc)
        serial.wait_line(SECOND, BOOT_TIMEOUT, proc)
        return proc, serial, qmp

    @staticmethod
    def guest_write_rate(serial: Serial, proc: Proc) -> float:
        """Bytes/s the guest wrote between its `second 1` and `second 2` lines (waits for the second)."""
        _, two = serial.wait_line(r"dirty: second 2 written (\d+) sum", BOOT_TIMEOUT, proc)
        _, one = serial.wait_line(r"dirty: second 1 written (\d+) sum", 0, proc)
        return (int(two.group(1)) - int(one.group(1))) * 4096.0

    @staticmethod
    def verify(serial: Serial, proc: Proc, after: float) -> tuple[float, str]:
        """Send `v`; the arrival of the guest's answer and the answer. BenchError for a FAIL."""
        serial.send(b"v")
        t, m = serial.wait_line(VERIFY, STEP_TIMEOUT, proc, after=after)
        if not m.group(1).startswith("VERIFY OK"):
            raise BenchError(f"{proc.name}: the guest's check failed: dirty: {m.group(1)}")
        return t, m.group(1)

    def quit_guest(self, serial: Serial, proc: Proc) -> None:
        """`q` ends the guest (and the VMM); stopped by signal if it does not."""
        try:
            serial.send(b"q")
        except OSError:
            pass
        proc.wait_exit(10)
        serial.close()
        proc.stop()

    # --- 1. save and restore ------------------------------------------------------------
    def save_restore_pyvirt(self, memory: str, pages: int) -> dict[str, Any]:
        cmdline = f"rate={SAVE_RATE} pages={pages} spread"
        proc, serial, api = self.boot_pyvirt(memory, cmdline)
        file = self.path("vm.save")
        p, wall = self.pyvirt_cli(["vm", "save", "--api-socket", api, file, "-o", "json"], STEP_TIMEOUT * 3)
        if p.returncode != 0:
            raise BenchError(f"pyvirt vm save: status {p.returncode}: {p.stderr.strip()}")
        reply = json.loads(p.stdout)
        status = proc.wait_exit(STEP_TIMEOUT)
        serial.close()
        proc.stop()
        if status != 0:
            raise BenchError(f"the saved VM ended with status {status}, not 0")
        out: dict[str, Any] = {"save_s": reply["seconds"], "save_wall_s": wall, "file_bytes": os.path.getsize(file),
                               "memory_pages": reply.get("memory_pages"), "memory_runs": reply.get("memory_runs"),
                               "restores": []}
        for _ in range(self.args.reps):
            ser, api2 = self.path("serial.sock"), self.path("api.sock")
            r = self.procs.spawn("pyvirt restore", self.pyvirt + ["-v", "restore", file, "--serial", f"socket:{ser}",
                                                                  "--api-socket", api2], self.env)
            try:
                serial = Serial(ser, r)
                t_run, m = wait_until("the 'restored' log line", lambda: r.find(RESTORED), STEP_TIMEOUT, r,
                                      interval=0.001)
                t_ok, _ = self.verify(serial, r, after=t_run)
                out["restores"].append({"restore_s": float(m.group(1)) / 1000, "spawn_to_running_s": t_run,
                                        "spawn_to_first_line_s": serial.first_line_after(t_run),
                                        "spawn_to_verify_s": t_ok})
                self.quit_guest(serial, r)
            finally:
                r.stop()
            out["restores"][-1].update(self.warm_restore_pyvirt(file))
        os.unlink(file)
        return out

    def warm_restore_pyvirt(self, file: str) -> dict[str, Any]:
        """`pyvirt restore --api-socket` started ahead, then `pyvirt vm restore FILE`:
        the VMM's own figures (restore_ms, to_run_ms) and the guest's VERIFY."""
        ser, api = self.path("serial-w.sock"), self.path("api-w.sock")
        r = self.procs.spawn("pyvirt restore (waiting)", self.pyvirt + ["restore", "--api-socket", api, "--serial",
                                                                        f"socket:{ser}"], self.env)
        try:
            wait_until("the waiting VMM", lambda: r.find("waiting for PUT /restore"), STEP_TIMEOUT, r)
            p, _ = self.pyvirt_cli(["vm", "restore", "--api-socket", api, file, "-o", "json"], STEP_TIMEOUT)
            if p.returncode != 0:
                raise BenchError(f"pyvirt vm restore: status {p.returncode}: {p.stderr.strip()}")
            reply = json.loads(p.stdout)
            serial = Serial(ser, r)  # the restore makes the serial socket
            self.verify(serial, r, after=0.0)
            self.quit_guest(serial, r)
            return {"warm_restore_s": reply["restore_ms"] / 1000,
                    "warm_to_run_s": None if reply["to_run_ms"] is None else reply["to_run_ms"] / 1000}
        finally:
            r.stop()

    def save_restore_qemu(self, memory: str, pages: int) -> dict[str, Any]:
        cmdline = f"rate={SAVE_RATE} pages={pages} spread"
        proc, serial, qmp = self.boot_qemu(memory, cmdline)
        file = self.path("vm.qemu")
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": QEMU_UNLIMITED})
        t0 = time.perf_counter()
        qmp.execute("stop")
        qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(file)}")
        info = self.qemu_wait_migration(qmp, STEP_TIMEOUT * 3)
        t1 = time.perf_counter()
        if info.get("status") != "completed":
            raise BenchError(f"QEMU's migration to the file ended {info.get('status')}: {info.get('error-desc', '')}")
        try:
            qmp.execute("quit")
        except QmpError:
            pass
        proc.wait_exit(STEP_TIMEOUT)
        qmp.close()
        serial.close()
        proc.stop()
        t2 = time.perf_counter()
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_s = time.perf_counter() - t2
        out: dict[str, Any] = {"save_s": t1 - t0, "fsync_s": fsync_s, "save_fsync_s": t1 - t0 + fsync_s,
                               "total_time_ms": info.get("total-time"), "file_bytes": os.path.getsize(file),
                               "restores": []}
        for _ in range(self.args.reps):
            qmp_path, ser = self.path("qmp.sock"), self.path("serial.sock")
            r = self.procs.spawn("QEMU restore", self.qemu_argv(memory, cmdline, qmp_path, ser, incoming="defer"))
            try:
                q = Qmp(qmp_path, r)
                serial = Serial(ser, r)
                q.execute("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
                t_cmd = time.perf_counter() - r.t0
                q.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(file)}")
                # The VM was saved paused, so it arrives paused: `cont` once loaded, as libvirt does.
                wait_until("QEMU's incoming migration", lambda: q.event("MIGRATION", status=("completed", "failed")),
                           STEP_TIMEOUT, r, interval=0.001)
                if q.event("MIGRATION", status=("failed",)):
                    raise BenchError(f"QEMU could not load its own file:\n{r.stderr_tail()}")
                q.execute("cont")
                t_run, _ = q.wait_event("RESUME", STEP_TIMEOUT)
                t_ok, _ = self.verify(serial, r, after=t_run)
                out["restores"].append({"restore_s": t_run - t_cmd, "spawn_to_running_s": t_run,
                                        "spawn_to_first_line_s": serial.first_line_after(t_run),
                                        "spawn_to_verify_s": t_ok})
                q.close()
                self.quit_guest(serial, r)
            finally:
                r.stop()
        os.unlink(file)
        return out

    @staticmethod
    def qemu_wait_migration(qmp: Qmp, timeout: float) -> dict[str, Any]:
        """Poll query-migrate until the migration ends; after `timeout` cancel it and return its last record."""
        deadline = time.monotonic() + timeout
        while True:
            info = qmp.execute("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                return info
            if time.monotonic() > deadline:
                qmp.execute("migrate_cancel")
                info["status"] = f"not completed after {timeout:.0f} s (cancelled)"
                return info
            time.sleep(0.05)

    # --- 2. live migration ----------------------------------------------------------------
    def migrate_pyvirt(self, rate: int, pages: int) -> dict[str, Any]:
        cmdline = f"rate={rate} pages={pages} spread"
        port = free_port()
        dst_ser, dst_api = self.path("serial.sock"), self.path("api.sock")
        dst = self.procs.spawn("pyvirt (destination)", self.pyvirt + [
            "-v", "run", "--incoming", f"tcp:127.0.0.1:{port}", "--serial", f"socket:{dst_ser}",
            "--api-socket", dst_api], self.env)
        src, src_serial, api = self.boot_pyvirt(MIGRATION_MEMORY, cmdline)
        try:
            written = self.guest_write_rate(src_serial, src)
            wait_until("the destination to listen", lambda: dst.find("waiting for an incoming migration"),
                       STEP_TIMEOUT, dst)
            p, wall = self.pyvirt_cli(["vm", "migrate", "--api-socket", api, f"tcp:127.0.0.1:{port}",
                                       "--downtime", str(DOWNTIME_MS), "-o", "json"], self.args.migrate_timeout)
            try:
                final = json.loads(p.stdout)
            except ValueError:
                raise BenchError(f"pyvirt vm migrate: status {p.returncode}: {p.stderr.strip()[-2000:]}") from None
            if final.get("state") != "completed":
                raise BenchError(f"pyvirt migration ended {final.get('state')}: {final.get('error')}")
            out = {"guest_write_bytes_s": written, "total_time_s": final.get("total_time"),
                   "downtime_s": final.get("downtime"), "rounds": final.get("round"),
                   "transferred_bytes": final.get("transferred"),
                   "final_pages": final.get("final_pages"), "throttle": final.get("throttle"),
                   "dirty_rate_bytes_s": final.get("dirty_rate"), "bandwidth_bytes_s": final.get("bandwidth"),
                   "switchover_ms": final.get("switchover_ms"), "cli_wall_s": wall}
            dst_serial = Serial(dst_ser, dst)
            _, answer = self.verify(dst_serial, dst, after=-1.0)
            out["verify"] = answer
            out["source_status"] = src.wait_exit(STEP_TIMEOUT)
            self.quit_guest(dst_serial, dst)
            return out
        finally:
            src_serial.close()
            src.stop()
            dst.stop()

    def migrate_qemu(self, rate: int, pages: int) -> dict[str, Any]:
        cmdline = f"rate={rate} pages={pages} spread"
        port = free_port()
        dq, ds = self.path("qmp.sock"), self.path("serial.sock")
        dst = self.procs.spawn("QEMU (destination)", self.qemu_argv(MIGRATION_MEMORY, cmdline, dq, ds,
                                                                    incoming=f"tcp:127.0.0.1:{port}"))
        src = None
        try:
            dst_qmp = Qmp(dq, dst)
            dst_serial = Serial(ds, dst)
            src, src_serial, qmp = self.boot_qemu(MIGRATION_MEMORY, cmdline)
            written = self.guest_write_rate(src_serial, src)
            qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "auto-converge", "state": True}])
            qmp.execute("migrate-set-parameters", **{"downtime-limit": DOWNTIME_MS, "max-bandwidth": QEMU_UNLIMITED})
            qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
            info = self.qemu_wait_migration(qmp, self.args.migrate_timeout)
            ram = info.get("ram", {})
            out: dict[str, Any] = {"guest_write_bytes_s": written, "status": info.get("status"),
                                   "total_time_s": _ms(info.get("total-time")),
                                   "downtime_s": _ms(info.get("downtime")), "setup_time_s": _ms(info.get("setup-time")),
                                   "rounds": ram.get("dirty-sync-count"), "transferred_bytes": ram.get("transferred"),
                                   "throttle_percent": info.get("cpu-throttle-percentage")}
            if info.get("status") != "completed":
                raise BenchError(f"QEMU migration {info.get('status')}: {info.get('error-desc', '')} "
                                 f"(after {ram.get('dirty-sync-count')} syncs, {ram.get('transferred', 0) / 2**20:.0f} "
                                 f"MiB sent, throttle {info.get('cpu-throttle-percentage', 0)}%)")
            t_run, resume = dst_qmp.wait_event("RESUME", STEP_TIMEOUT)
            stop = qmp.event("STOP")
            out["stop_to_resume_s"] = event_time(resume) - event_time(stop[1]) if stop else None
            _, answer = self.verify(dst_serial, dst, after=t_run)
            out["verify"] = answer
            for q, p in ((qmp, src), (dst_qmp, None)):
                if p is not None:
                    try:
                        q.execute("quit")
                    except QmpError:
                        pass
                q.close()
            src_serial.close()
            self.quit_guest(dst_serial, dst)
            return out
        finally:
            if src is not None:
                src.stop()
            dst.stop()


def _ms(x: Any) -> float | None:
    return x / 1000 if isinstance(x, (int, float)) else None


def qemu_cpu_option(qemu: str) -> tuple[str | None, str]:
    """`-cpu host` unless this KVM refuses it (kvm_pvm and IA32_ARCH_CAPABILITIES), as run.py does."""
    errors = []
    for cpu in ("host", "host,-arch-capabilities", None):
        cmd = [qemu, "-M", "microvm,accel=kvm", *(["-cpu", cpu] if cpu else []), "-m", "64M", "-nodefaults",
               "-no-user-config", "-display", "none", "-serial", "null", "-monitor", "none", "-no-reboot",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(GUEST),
               "-append", "rate=0 pages=16 seconds=1"]  # COM1 must exist: the guest polls it
        label = f"-cpu {cpu}" if cpu else "the default -cpu"
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            errors.append(f"{label}: no exit in 30 s")
            continue
        if p.returncode == GUEST_EXIT_0:
            return cpu, ""
        errors.append(f"{label}: status {p.returncode}: {p.stderr.decode(errors='replace').strip()[-300:]}")
    return None, "QEMU does not run the guest: " + "; ".join(errors)


# --------------------------------------------------------------------------- report

def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2f} s" if x >= 1.0 else f"{x * 1e3:.1f} ms"


def fmt_mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f} MiB"


def values(runs: list[dict[str, Any]], key: str) -> list[float]:
    """The figure `key` of every run that has it."""
    return [r[key] for r in runs if r.get(key) is not None]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


class Report:
    """Rows of figure / pyvirt / QEMU / ratio / target / verdict, and the comparisons for the JSON."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.comparisons: list[dict[str, Any]] = []

    def add(self, figure: str, ours: list[float], theirs: list[float], fmt: Callable[[Any], str],
            qemu_note: str = "", target: str = "-",
            passed: Callable[[float | None, float | None], bool | None] | None = None,
            ratio: bool = True) -> None:
        """One row from the runs' values: the medians, (min-max) when the runs differ, the ratio of the medians."""
        a, b = median(ours), median(theirs)
        r = a / b if ratio and a is not None and b else None
        verdict = "info" if passed is None else {None: "n/a", True: "PASS", False: "MISS"}[passed(a, r)]

        def cell(xs: list[float]) -> str:
            low, high = (fmt(min(xs)), fmt(max(xs))) if xs else ("", "")
            return fmt(median(xs)) + (f" ({low}-{high})" if low != high else "")

        self.rows.append([figure, cell(ours), qemu_note or cell(theirs), "n/a" if r is None else f"{r:.2f}x",
                          target, verdict])
        self.comparisons.append({"figure": figure, "pyvirt": a, "qemu": b, "ratio": r, "target": target,
                                 "verdict": verdict, "shown": fmt(a) if "QEMU" not in target else
                                 f"{'n/a' if r is None else f'{r:.2f}x'} ({fmt(a)} vs {fmt(b)})"})

    def text(self) -> str:
        return common.table(self.rows, ["figure", "pyvirt", "QEMU", "ratio", "target", "verdict"])


def at_most(limit: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda value, _ratio: None if value is None else value <= limit


def ratio_at_most(limit: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda _value, ratio: None if ratio is None else ratio <= limit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one restore per size and one migration per rate")
    ap.add_argument("--reps", type=int, help="restores of each saved file and migrations per rate (default 3, "
                                             "quick 1)")
    ap.add_argument("--migrate-timeout", type=float, default=120.0,
                    help="seconds a live migration may take before it is cancelled (default 120)")
    ap.add_argument("--only", choices=("save", "migrate"), help="measure only save/restore or only live migration")
    ap.add_argument("--json", type=Path, default=RESULTS / "migration-latest.json", help="where to write the results")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    t_begin, load_begin, cpu_begin = time.monotonic(), os.getloadavg(), common.cpu_times()

    log("pyvirt save/restore and live migration benchmark: pyvirt vs QEMU microvm, guests/build/dirty.elf")
    info = common.host_preamble(load_begin[0])
    if info is None:
        return 1
    if not GUEST.exists():
        p = subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], capture_output=True, text=True)
        if p.returncode or not GUEST.exists():
            log(f"  make -C guests failed:\n{p.stderr.strip()}")
            return 1
    problems: list[str] = []  # QEMU's: reported, the status stays 0
    failures: list[str] = []  # pyvirt's: status 1
    qemu, why = common.ensure_qemu()
    qemu_cpu, cpu_err = qemu_cpu_option(qemu) if qemu else (None, why)
    qemu_ok = qemu is not None and not cpu_err
    qemu_version = ""
    if qemu_ok:
        assert qemu is not None
        v = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
        qemu_version = f"{v[0] if v else qemu}; -cpu {qemu_cpu or '(default)'}"
    else:
        problems.append(f"QEMU: {cpu_err or why}")
    log(f"  QEMU: {qemu_version or 'unavailable: ' + (cpu_err or why)}")
    log(f"  save/restore: {', '.join(f'{m} pages={n}' for m, n in SAVE_CASES)}, rate={SAVE_RATE} spread; "
        f"{args.reps} restore(s) of each file")
    log(f"  live migration: {MIGRATION_MEMORY}, " + ", ".join(f"rate={r} pages={n}" for r, n in MIGRATION_CASES)
        + f" spread; downtime limit {DOWNTIME_MS} ms; 127.0.0.1")

    saves: dict[str, dict[str, Any]] = {}
    migrations: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}  # "what, vmm" -> why it has no figure

    def measure(key: str, vmm: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """fn's figures, or None with the reason in `errors` (and the problems)."""
        if f"{key}, {vmm}" in errors:  # failed before: not again
            return None
        if vmm == "QEMU" and not qemu_ok:
            errors[f"{key}, {vmm}"] = "QEMU unavailable"
            return None
        try:
            return fn()
        except (BenchError, QmpError, OSError, ValueError, KeyError) as e:
            errors[f"{key}, {vmm}"] = str(e)
            (failures if vmm == "pyvirt" else problems).append(f"{key}, {vmm}: {e}")
            log(f"    {vmm}: FAILED: {str(e).splitlines()[0]}")
            return None

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # through the `finally` below: every VM stopped, the files removed

    tmp = Path(tempfile.mkdtemp(prefix="pyvirt-mig-"))
    bench = Bench(args, tmp, qemu, qemu_cpu)
    old_handler = signal.signal(signal.SIGTERM, terminate)
    try:
        if args.only != "migrate":
            for i, (memory, pages) in enumerate(SAVE_CASES):
                saves[memory] = {}
                for vmm, save_fn in (("pyvirt", bench.save_restore_pyvirt), ("QEMU", bench.save_restore_qemu)):
                    log(f"[save/restore {i + 1}/{len(SAVE_CASES)}] {memory}, {pages} pages: {vmm} ...")
                    figures = measure(f"save/restore {memory}", vmm, lambda: save_fn(memory, pages))
                    if figures is not None:
                        saves[memory][vmm] = figures
        if args.only != "save":
            for i, (rate, pages) in enumerate(MIGRATION_CASES):
                migrations[str(rate)] = {"pyvirt": [], "QEMU": []}
                for rep in range(args.reps):
                    log(f"[migration {i + 1}/{len(MIGRATION_CASES)}] {rate} MiB/s, {pages} pages, "
                        f"{rep + 1}/{args.reps}: pyvirt, QEMU ...")
                    for vmm, mig_fn in (("pyvirt", bench.migrate_pyvirt), ("QEMU", bench.migrate_qemu)):
                        figures = measure(f"migration {rate} MiB/s", vmm, lambda: mig_fn(rate, pages))
                        if figures is not None:
                            migrations[str(rate)][vmm].append(figures)
    finally:
        bench.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_handler)
    elapsed = time.monotonic() - t_begin

    # ---- tables
    report = Report()

    def qnote(key: str) -> str:
        return "n/a (failed)" if f"{key}, QEMU" in errors else ""

    restore_s: dict[str, float | None] = {}
    for memory, _ in SAVE_CASES:
        if memory not in saves:
            continue
        py, qe = saves[memory].get("pyvirt", {}), saves[memory].get("QEMU", {})
        note = qnote(f"save/restore {memory}")
        pr, qr = py.get("restores", []), qe.get("restores", [])
        report.add(f"{memory}: save (pyvirt: reply seconds; QEMU: stop -> completed + fsync)", values([py], "save_s"),
                   values([qe], "save_fsync_s"), fmt_s, note)
        report.add(f"{memory}: save file size", values([py], "file_bytes"), values([qe], "file_bytes"), fmt_mib, note)
        restore_s[memory] = median(values(pr, "restore_s"))
        report.add(f"{memory}: restore itself (pyvirt log; QEMU migrate-incoming -> RESUME)",
                   values(pr, "restore_s"), values(qr, "restore_s"), fmt_s, note, f"<= {TARGET_RESTORE_MS:.0f} ms",
                   at_most(TARGET_RESTORE_MS / 1000))
        report.add(f"{memory}: restore in a VMM started ahead (PUT /restore -> vCPUs started)",
                   values(pr, "warm_to_run_s"), [], fmt_s, "", f"<= {TARGET_RESTORE_MS:.0f} ms",
                   at_most(TARGET_RESTORE_MS / 1000))
        for key, label in (("spawn_to_running_s", "spawn -> running"),
                           ("spawn_to_first_line_s", "spawn -> first serial line"),
                           ("spawn_to_verify_s", "spawn -> VERIFY OK")):
            report.add(f"{memory}: restore, {label}", values(pr, key), values(qr, key), fmt_s, note)
    small, large = restore_s.get("256M"), restore_s.get("1G")
    if small and large:
        report.rows.append(["restore itself, 1 GiB / 256 MiB", f"{large / small:.2f}x", "", "",
                            "independent of size", "info"])
    for rate, _ in MIGRATION_CASES:
        if str(rate) not in migrations:
            continue
        pm, qm = migrations[str(rate)]["pyvirt"], migrations[str(rate)]["QEMU"]
        note = qnote(f"migration {rate} MiB/s") if not qm else ""
        what = f"migrate {rate} MiB/s"
        report.add(f"{what}: guest's write rate before it", values(pm, "guest_write_bytes_s"),
                   values(qm, "guest_write_bytes_s"), lambda x: "n/a" if x is None else f"{x / 2**20:.0f} MiB/s",
                   note, ratio=False)
        report.add(f"{what}: total time", values(pm, "total_time_s"), values(qm, "total_time_s"), fmt_s, note,
                   f"<= {TARGET_TOTAL_RATIO:.1f}x QEMU", ratio_at_most(TARGET_TOTAL_RATIO))
        report.add(f"{what}: downtime (QEMU: STOP -> RESUME)", values(pm, "downtime_s"),
                   values(qm, "stop_to_resume_s"), fmt_s, note,
                   f"<= {TARGET_DOWNTIME_MS:.0f} ms" if rate == 50 else "-",
                   at_most(TARGET_DOWNTIME_MS / 1000) if rate == 50 else None)
        report.add(f"{what}: QEMU's own downtime (source side)", [], values(qm, "downtime_s"), fmt_s, note,
                   ratio=False)
        report.add(f"{what}: rounds (QEMU: dirty syncs)", values(pm, "rounds"), values(qm, "rounds"),
                   lambda x: "n/a" if x is None else f"{x:g}", note, ratio=False)
        report.add(f"{what}: sent", values(pm, "transferred_bytes"), values(qm, "transferred_bytes"), fmt_mib, note)
        checked = lambda runs: f"{len(runs)}/{args.reps} OK"  # noqa: E731  (a FAIL is an error, not a run)
        report.rows.append([f"{what}: VERIFY on the destination", checked(pm), note or checked(qm), "",
                            f"{args.reps}/{args.reps} OK", ""])
    log("")
    log(f"pyvirt against QEMU microvm (median of {args.reps} run(s) of each restore and migration, (min-max) "
        "when they differ; ratio = pyvirt / QEMU of the medians)")
    log(report.text())
    log("")
    log("Targets:")
    for c in report.comparisons:
        if c["verdict"] in ("PASS", "MISS", "n/a") and c["target"] != "-":
            log(f"  {c['verdict']:4}  {c['figure']}: {c['shown']}, target {c['target']}")
    steal = common.steal_fraction(cpu_begin, common.cpu_times())
    log(f"  noise: load average {load_begin[0]:.2f} before; "
        f"{'n/a' if steal is None else f'{steal * 100:.1f}%'} of CPU time stolen by the hypervisor during the run")
    if saves:
        log("  restore itself: pyvirt from opening the file to a machine ready to run (its log line), without the "
            "interpreter's start (the spawn -> running row has it); QEMU from migrate-incoming to RESUME (it reads "
            "all of memory first). pyvirt's save fsyncs its file, so QEMU's save is stop -> completed plus an fsync.")
    if migrations:
        log("  downtime: pyvirt's is the guest's pause up to the start on the destination; QEMU's own figure ends "
            "when the source has sent everything, so the ratio uses its STOP -> RESUME event times instead.")
    if problems or failures:
        log("")
        log("Problems:")
        for msg in failures + problems:
            log("  - " + msg.replace("\n", "\n    "))
    log(f"Total time {elapsed:.0f} s.")

    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": info,
        "settings": {"save_cases": SAVE_CASES, "save_rate_mib_s": SAVE_RATE, "reps": args.reps,
                     "migration_memory": MIGRATION_MEMORY, "migration_cases": MIGRATION_CASES,
                     "downtime_limit_ms": DOWNTIME_MS, "migrate_timeout_s": args.migrate_timeout,
                     "qemu": qemu_version, "qemu_max_bandwidth": QEMU_UNLIMITED, "qemu_auto_converge": True},
        "save_restore": saves,
        "migration": migrations,
        "comparisons": report.comparisons,
        "errors": errors,
        "problems": failures + problems,
        "elapsed_s": elapsed,
        "load_average_1min_before": load_begin[0],
        "steal_fraction": steal,
    }
    common.write_results(args.json, result)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
