"""The source side of a live migration: pre-copy rounds, switchover, post-copy.

`OutgoingMigration.run` (on its own thread, started by the control API):

1. connect, send HELLO (the machine's configuration), wait for WELCOME;
2. start KVM's dirty log and the VMM's write record (dirty.py), then send
   every page that is not zero (round 0) while the guest runs;
3. round after round, send the pages written since the last round; when
   the rest would take no longer than the downtime limit at the measured
   bandwidth, switch over. If the guest writes faster than the link
   carries, auto-converge throttles its vCPUs (parks them a growing share
   of each 50 ms period), and with post-copy allowed the VM moves after a
   few rounds and the destination fetches the rest on demand;
4. switchover: park the vCPUs, quiesce the devices, send the last pages
   (with every page the VMM wrote during the migration and the used rings,
   see dirty.py), the state of the VM, vCPUs and devices; flush and close
   the disks (the destination opens them now), COMPLETE; the destination
   answers READY once everything is loaded; GO; STARTED.

Until GO is sent, any failure (a cut connection, a destination that
reports an error or dies, a cancel) undoes the switchover: the disks are
reopened and the VM runs on here. After GO the destination owns the VM:
this VM stops (status 0) once STARTED arrives; if it never does, this VM
stays paused and the error says the destination may be running it.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import threading
import time

from .._log import get_logger
from ..kvm import KvmError
from . import stream
from .dirty import PAGE, DirtyLog, VmmWrites, encode_pages, page_runs
from .stream import MigrationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ..vmm.machine import Machine
    from .disk_copy import DiskCopySource

log = get_logger(__name__)

CHUNK = 4 << 20  # bytes of guest memory per PAGES message
THROTTLE_PERIOD = 0.05  # seconds: auto-converge parks the vCPUs for a share of each
THROTTLE_START, THROTTLE_STEP, THROTTLE_MAX = 0.2, 0.1, 0.99
POSTCOPY_AFTER = 2  # pre-copy rounds after the first before post-copy may start
STARTED_TIMEOUT = 30.0  # seconds for the destination to load the state and start
RESULT_LINGER = 2.0  # seconds a migrated VM waits for its result to be read before it ends


@dataclasses.dataclass
class MigrationOptions:
    uri: str
    downtime_limit: float = 0.050  # seconds the VM may be paused at switchover
    max_rounds: int = 30  # pre-copy rounds before giving up (without post-copy)
    auto_converge: bool = True
    postcopy: bool = False  # move the VM after a few rounds, fetch the rest on demand
    bandwidth: int = 0  # bytes/s to use at most; 0: as fast as the link goes
    copy_disks: bool = False  # send the writable disks too (hosts without shared storage)
    connect_timeout: float = 10.0

    def check(self) -> None:
        stream.parse_uri(self.uri)
        if not 0 < self.downtime_limit <= 60:
            raise ValueError(f"downtime limit {self.downtime_limit} s must be above 0 and at most 60 s")
        if not 1 <= self.max_rounds <= 10000:
            raise ValueError(f"max rounds {self.max_rounds} must be 1 to 10000")
        if self.bandwidth < 0:
            raise ValueError("bandwidth must be positive (or 0: unlimited)")


@dataclasses.dataclass
class Progress:
    """What `GET /migrate` and `stats` show; updated by the migration thread."""

    state: str = "setup"  # setup, copying disks, precopy, switchover, postcopy, completed, failed, cancelled
    uri: str = ""
    round: int = 0
    transferred: int = 0  # bytes sent
    pages_sent: int = 0
    remaining: int = 0  # bytes dirty and not yet sent
    dirty_rate: int = 0  # bytes/s the guest dirtied in the last round
    bandwidth: int = 0  # bytes/s measured
    expected_downtime: float = 0.0  # seconds
    throttle: float = 0.0  # share of time the vCPUs are parked by auto-converge
    elapsed: float = 0.0  # seconds since the start
    downtime: float | None = None  # seconds the VM did not run (after switchover)
    total_time: float | None = None
    postcopy_pages: int = 0  # pages fetched after the VM moved
    final_pages: int = 0  # pages sent with the VM paused
    switchover_ms: dict[str, float] = dataclasses.field(default_factory=dict)  # where the downtime went
    error: str = ""
    memory: int = 0  # bytes of guest RAM
    dirty_tracking: str = ""  # "ring" (KVM's per-vCPU dirty rings) or "bitmap"

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Throttle:
    """Auto-converge: parks the vCPUs for `share` of every period."""

    def __init__(self, m: Machine) -> None:
        self.m = m
        self.share = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set(self, share: float) -> None:
        self.share = share
        if share > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="migration-throttle", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            paused = THROTTLE_PERIOD * self.share
            try:
                self.m.pause()
            except Exception:  # the VM is stopping: nothing to throttle
                return
            try:
                self._stop.wait(paused)
            finally:
                self.m.resume()
            self._stop.wait(THROTTLE_PERIOD - paused)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class Cancelled(MigrationError):
    pass


class OutgoingMigration:
    def __init__(self, m: Machine, options: MigrationOptions, clock: Callable[[], float] = time.monotonic) -> None:
        options.check()
        self.m = m
        self.opt = options
        self.clock = clock
        self.progress = Progress(uri=options.uri, memory=m.cfg.memory,
                                 dirty_tracking="ring" if m.dirty_rings else "bitmap")
        self._cancel = threading.Event()
        self._result_read = threading.Event()
        self._lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.ch: stream.Channel | None = None
        self.disk_copy: DiskCopySource | None = None
        self._start = 0.0

    # --- control ------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="migration", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def active(self) -> bool:
        return self.progress.state not in ("completed", "failed", "cancelled")

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            if self.active:
                self.progress.elapsed = round(self.clock() - self._start, 3) if self._start else 0.0
            else:
                self._result_read.set()
            return self.progress.as_dict()

    def _update(self, **fields: object) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self.progress, k, v)

    # --- the migration --------------------------------------------------------------
    def run(self) -> None:
        from ..vmm import exit_status

        self._start = self.clock()
        try:
            self._migrate()
            # Whoever follows the migration (`pyvirt vm migrate`) reads the
            # result before the VM, and with it the API socket, goes away.
            self._result_read.wait(RESULT_LINGER)
            # Only now, with the dirty log off: stopping lets the VM's main
            # thread close the VM under this thread.
            self.m.stop(exit_status.POWEROFF, f"migrated to {self.opt.uri}")
        except Cancelled as e:
            self._update(state="cancelled", error=str(e))
            log.warning("migration to %s cancelled; the VM runs on here", self.opt.uri)
        except Exception as e:  # every failure is reported, and the VM runs on
            msg = str(e) if isinstance(e, (MigrationError, OSError, KvmError)) else f"{type(e).__name__}: {e}"
            if "runs on here" not in msg and "stays paused" not in msg and not self.m._flag.stopping:
                msg += "; the VM runs on here"
            self._update(state="failed", error=msg)
            log.warning("migration to %s failed: %s", self.opt.uri, msg)
            if not isinstance(e, (MigrationError, OSError, KvmError)):
                log.debug("migration failure", exc_info=True)
        finally:
            if self.ch is not None:
                self.ch.close()
            with self._lock:
                if self.progress.total_time is None:
                    self.progress.total_time = round(self.clock() - self._start, 3)
                self.progress.elapsed = self.progress.total_time

    def _connect(self) -> stream.Channel:
        host, port = stream.parse_uri(self.opt.uri)
        try:
            sock = socket.create_connection((host, port), timeout=self.opt.connect_timeout)
        except OSError as e:
            raise MigrationError(f"cannot connect to {host}:{port}: {e.strerror or e} "
                                 "(is `pyvirt run --incoming` listening there?)") from e
        sock.settimeout(STARTED_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream.Channel(sock, f"the destination {host}:{port}")

    def _hello(self) -> dict[str, object]:
        from ..vmm.device_config import DiskConfig
        from ..vmm.snapshot_header import machine_header
        from .disks import blk_devices, image_format

        m = self.m
        cfg = copy.copy(m.cfg)
        # The disks as the devices serve them now (a snapshot may have moved one to an overlay).
        # The serial the guest sees now (a default one depends on the host's inode numbers).
        cfg.disks = [DiskConfig(dev.backend.path, dev.backend.readonly, dev.backend.id, image_format(dev.backend),
                                d.iops, d.bps) for dev, d in zip(blk_devices(m), m.cfg.disks)]
        macs = [":".join(f"{b:02x}" for b in dev.mac) for dev in (m.virtio.devices if m.virtio else ())  # type: ignore[attr-defined]
                if dev.name == "net"]
        header = machine_header(cfg, kind="migration", pvm=m.pvm, backend=m.backend, tsc_khz=_tsc_khz(m),
                                regions=[(r.gpa, r.size) for r in m.mem.regions], macs=macs,
                                compression="none", created=time.time())
        return {"magic": stream.MAGIC, "protocol": stream.PROTOCOL, "config": header,
                "postcopy": self.opt.postcopy}

    def _check_live(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled through the control API")
        if self.m._flag.stopping:
            raise MigrationError("the VM stopped during the migration")

    def _migrate(self) -> None:
        m = self.m
        self.ch = ch = self._connect()
        hello = self._hello()
        if self.opt.copy_disks:
            from .disk_copy import DiskCopySource
            from .disks import blk_devices

            self.disk_copy = DiskCopySource(blk_devices(m))  # tracks the guest's writes from here on
            hello["copy_disks"] = self.disk_copy.describe()
        try:
            ch.send_json(stream.HELLO, hello)
            _warm_up(m)  # while the destination builds the VM
            ch.expect(stream.WELCOME, "waiting for the destination to build the VM")
            self._check_live()
            if self.disk_copy is not None:
                self._update(state="copying disks")
                self.disk_copy.bulk(ch, self._check_live)
                self._update(transferred=ch.sent)
            self._precopy()
        finally:
            if self.disk_copy is not None:
                self.disk_copy.finish()

    def _precopy(self) -> None:
        m = self.m
        ch = self.ch
        assert ch is not None
        log_ = DirtyLog(m.vm, m.mem, m.harvest_dirty_rings if m.dirty_rings else None)
        vmm = VmmWrites(m.mem)
        throttle = Throttle(m)
        vmm.start()
        log_.start()
        try:
            self._update(state="precopy")
            t0 = self.clock()
            sent = self._send_runs(_nonzero(m))
            self._round_trip(0)
            bw = sent / max(self.clock() - t0, 1e-3)
            rounds_over = 0  # rounds in a row where the guest dirtied more than half of what was sent
            while True:
                self._check_live()
                t_round = self.clock()
                dirty = set(log_.fetch()) | vmm.fetch()
                remaining = len(dirty) * PAGE
                if self.disk_copy is not None:
                    remaining += self.disk_copy.dirty_bytes()
                rate = remaining / max(t_round - t0, 1e-3)
                # The final round also sends every page the VMM touched (dirty.py).
                expected = (remaining + len(vmm.all - dirty) * PAGE) / max(bw, 1.0)
                rnd = self.progress.round + 1
                self._update(round=rnd, remaining=remaining, dirty_rate=int(rate), bandwidth=int(bw),
                             expected_downtime=round(expected, 4))
                if expected <= self.opt.downtime_limit:
                    throttle.stop()
                    self._switchover(log_, vmm, dirty)
                    return
                if self.opt.postcopy and rnd > POSTCOPY_AFTER:
                    throttle.stop()
                    self._switchover(log_, vmm, dirty, postcopy=True)
                    return
                if rnd > self.opt.max_rounds:
                    raise MigrationError(
                        f"did not converge in {self.opt.max_rounds} rounds: the guest dirties {rate / 2**20:.0f} "
                        f"MiB/s, the link carries {bw / 2**20:.0f} MiB/s and {remaining >> 20} MiB remain "
                        "(allow post-copy, raise the downtime limit or turn on auto-converge); the VM runs on here")
                rounds_over = rounds_over + 1 if remaining > sent / 2 else 0
                if self.opt.auto_converge and rounds_over >= 2:
                    share = min(THROTTLE_MAX, throttle.share + THROTTLE_STEP if throttle.share else THROTTLE_START)
                    if share != throttle.share:
                        log.info("migration: the guest dirties memory faster than it is sent; "
                                 "throttling its vCPUs to %.0f%%", 100 * (1 - share))
                        throttle.set(share)
                        self._update(throttle=share)
                    rounds_over = 0
                t0 = t_round
                sent = self.disk_copy.send_dirty(ch) if self.disk_copy is not None else 0
                sent += self._send_runs(page_runs(dirty, CHUNK // PAGE))
                self._round_trip(rnd)
                elapsed = self.clock() - t_round
                if sent >= 1 << 20 and elapsed > 0:
                    bw = 0.5 * bw + 0.5 * sent / elapsed  # smooth: a round's figure is noisy
        finally:
            throttle.stop()
            log_.stop()
            vmm.stop()

    def _round_trip(self, rnd: int) -> None:
        """End a round and wait until the destination has taken all of it:
        the socket buffers hold megabytes, and the bandwidth that decides the
        switchover is the one the destination keeps up with."""
        assert self.ch is not None
        self.ch.send_json(stream.ROUND, {"round": rnd})
        self.ch.expect(stream.ROUND, "waiting for the destination to take the round")

    # --- sending pages ----------------------------------------------------------------
    def _send_runs(self, runs: Iterable[tuple[int, int]]) -> int:
        """Send guest memory runs (gpa, length), many to a message; returns the bytes sent."""
        ch = self.ch
        assert ch is not None
        total = 0
        limit = self.opt.bandwidth
        start = self.clock()
        batch: list[tuple[int, memoryview]] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size, total
            ch.send_pages(batch)
            total += size
            self._update(transferred=ch.sent, pages_sent=self.progress.pages_sent + size // PAGE)
            batch, size = [], 0
            if limit:
                ahead = total / limit - (self.clock() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if self._cancel.is_set():
                raise Cancelled("cancelled through the control API")

        for gpa, length in runs:
            view = _ram_view(self.m, gpa, length)
            for off in range(0, length, CHUNK):
                part = view[off:off + CHUNK]
                if size + len(part) > CHUNK or len(batch) == stream.MAX_RUNS:
                    flush()
                batch.append((gpa + off, part))
                size += len(part)
        if batch:
            flush()
        return total

    # --- switchover -----------------------------------------------------------------
    def _switchover(self, log_: DirtyLog, vmm: VmmWrites, dirty: set[int], postcopy: bool = False) -> None:
        from ..vmm.save import capture_machine, quiesce, unquiesce
        from ..vmm.state_codec import encode
        from .disks import release

        m = self.m
        ch = self.ch
        assert ch is not None
        self._update(state="switchover")
        paused_at = self.clock()
        m.pause()
        phases: dict[str, float] = {}
        mark = [paused_at]

        def phase(name: str) -> None:
            now = self.clock()
            phases[name] = round((now - mark[0]) * 1000, 2)
            mark[0] = now

        phase("pause")
        released = None
        go_sent = False
        try:
            quiesce(m)
            try:
                phase("quiesce")
                final = dirty | set(log_.fetch()) | vmm.everything() | _used_ring_pages(m)
                phase("dirty_log")
                notes: list[str] = []
                vm_state, vcpus, devices = capture_machine(m, notes)
                for note in notes:
                    log.info("%s", note)
                state = {"vm": encode(vm_state), "vcpus": [encode(v) for v in vcpus], "devices": devices,
                         "notes": notes}
                phase("capture_state")
                if self.disk_copy is not None:
                    self.disk_copy.send_dirty(ch)
                    self.disk_copy.finish()  # the real backends, for release()
                if postcopy:
                    ch.send_json(stream.POSTCOPY, {"pages": encode_pages(final)})
                else:
                    self._send_runs(page_runs(final, CHUNK // PAGE))
                self._update(remaining=0, final_pages=len(final))
                phase("send_pages")
                released = release(m)
                phase("release_disks")
                ch.send_json(stream.STATE, state)
                ch.send_json(stream.COMPLETE, {})
                phase("send_state")
                ch.expect(stream.READY, "waiting for the destination to load the VM")
                phase("destination_load")
                self._check_cancel_before_go()
                ch.send_json(stream.GO, {})
                go_sent = True
                ch.expect(stream.STARTED, "waiting for the destination to start the VM")
                phase("destination_start")
                self._update(switchover_ms=phases)
            except BaseException:
                if not go_sent:
                    if released is not None:
                        _wait_for_close(ch)  # the destination lets go of the disks before it closes
                        for err in released.reacquire():
                            log.error("after the failed migration: %s", err)
                    unquiesce(m)
                raise
        except BaseException as e:
            if go_sent:
                # The destination may run the VM now: running it here too
                # would have two guests write the same disks.
                msg = (f"{e}; the destination may be running the VM: this VM stays paused (resume it only if "
                       "the destination does not run it)")
                raise MigrationError(msg) from e
            m.resume()
            if isinstance(e, MigrationError):
                raise MigrationError(f"{e}; the VM runs on here") from e
            raise
        downtime = self.clock() - paused_at
        if postcopy:
            self._update(state="postcopy", downtime=round(downtime, 4))
            try:
                self._serve_postcopy(final)
            except MigrationError as e:
                raise MigrationError(f"post-copy failed: {e}; this VM stays paused with all of its memory: "
                                     "if the destination stopped the VM, resume it here") from e
        self._update(state="completed", downtime=round(downtime, 4), total_time=round(self.clock() - self._start, 3))
        # A warning, so that a `pyvirt run` ending with status 0 says why.
        log.warning("migrated to %s: %d rounds, %.1f MiB sent, downtime %.1f ms; the VM runs there now",
                    self.opt.uri, self.progress.round, ch.sent / 2**20, downtime * 1000)

    def _check_cancel_before_go(self) -> None:
        if self._cancel.is_set():
            self.ch.send_error("the source cancelled the migration")  # type: ignore[union-attr]
            raise Cancelled("cancelled through the control API")

    # --- post-copy ------------------------------------------------------------------
    def _serve_postcopy(self, pending: set[int]) -> None:
        """Push every pending page, the ones the destination asks for first."""
        import select

        ch = self.ch
        assert ch is not None
        order = sorted(pending)
        left = set(pending)
        i = 0
        sock = ch.sock
        while left:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                kind, crc, length = ch.recv_frame("serving post-copy page requests")
                if kind != stream.REQUEST:
                    raise MigrationError(f"the destination sent {stream.NAMES[kind]} during post-copy")
                req = ch.recv_json(kind, crc, length, "reading a page request")
                pages = req.get("pages")
                if not isinstance(pages, list) or not all(type(p) is int for p in pages):
                    raise MigrationError("the destination sent a malformed page request")
                for p in pages:
                    if p in left:
                        left.discard(p)
                        ch.send_pages([(p * PAGE, _ram_view(self.m, p * PAGE, PAGE))])
                        self.progress.postcopy_pages += 1
                continue
            while i < len(order) and order[i] not in left:
                i += 1
            if i == len(order):
                break
            # a run of up to 64 pending pages in one message
            start = order[i]
            n = 1
            while n < 64 and i + n < len(order) and order[i + n] == start + n and order[i + n] in left:
                n += 1
            for p in range(start, start + n):
                left.discard(p)
            ch.send_pages([(start * PAGE, _ram_view(self.m, start * PAGE, n * PAGE))])
            i += n
            self._update(transferred=ch.sent)
        ch.send_json(stream.DONE, {})
        while True:  # requests that crossed DONE on the way are for pages already sent
            kind, crc, length = ch.recv_frame("waiting for the destination to confirm it has every page")
            if kind not in (stream.REQUEST, stream.DONE, stream.ERROR):
                raise MigrationError(f"the destination sent {stream.NAMES[kind]} at the end of post-copy")
            ch.recv_json(kind, crc, length, "waiting for the destination to confirm it has every page")
            if kind == stream.DONE:
                return


# --- helpers ------------------------------------------------------------------------

def _tsc_khz(m: Machine) -> int:
    try:
        return m.vcpus[0].get_tsc_khz()
    except (KvmError, IndexError):
        return 0


def _wait_for_close(ch: stream.Channel, timeout: float = 10.0) -> None:
    """Read and drop whatever the destination still sends until it closes
    the connection (or `timeout` passes)."""
    try:
        ch.sock.shutdown(socket.SHUT_WR)
        ch.sock.settimeout(timeout)
        while ch.sock.recv(65536):
            pass
    except OSError:
        pass


def _warm_up(m: Machine) -> None:
    """Do once, while the guest runs, what first makes capturing the state
    slow (imports, first calls): at switchover the guest waits for it."""
    from ..vmm.save import capture_devices, saveable_msrs, xsave_size
    from ..vmm.state_codec import encode

    capture_devices(m)
    saveable_msrs(m.kvm)
    xsave_size(m.vm)


def _ram_view(m: Machine, gpa: int, length: int) -> memoryview:
    """Guest memory without `GuestMemory.view` (which would record the
    migration's own reads as VMM writes)."""
    for r in m.mem.regions:
        if r.gpa <= gpa and gpa + length <= r.end:
            return r.view[gpa - r.gpa:gpa - r.gpa + length]
    raise MigrationError(f"guest memory {gpa:#x}+{length:#x} is outside RAM")


def _nonzero(m: Machine) -> list[tuple[int, int]]:
    """(gpa, length) of every run of pages that is not zero, cut at CHUNK."""
    from ..vmm.snapshot import nonzero_runs

    runs = []
    for r in m.mem.regions:
        for off, length in nonzero_runs(r.view):
            runs.append((r.gpa + off, length))
    return runs


def _used_ring_pages(m: Machine) -> set[int]:
    """Pages of every active virtqueue's used ring (devices write them through
    views taken at activation, which `GuestMemory` does not see)."""
    pages: set[int] = set()
    for dev in m.virtio.devices if m.virtio is not None else ():
        for q in dev.queues:
            end = q.used + 6 + 8 * q.size
            pages.update(range(q.used // PAGE, (end - 1) // PAGE + 1))
    return pages

