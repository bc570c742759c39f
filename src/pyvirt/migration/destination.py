"""The destination side of a live migration: `pyvirt run --incoming tcp:ADDR:PORT`.

It listens, takes one connection, builds the machine the source describes
in HELLO (memory, vCPUs, devices; its disks as `PendingDisk`s, see
disks.py) while the source's VM still runs, and receives guest memory
straight into the new VM's RAM, round after round. At COMPLETE it opens the
disks, loads the VM, vCPU and device state, and answers READY; at GO it
answers STARTED, announces the NICs' MACs (RARP) and runs the VM, like
`pyvirt run`. Anything wrong before GO (a cut stream, a malformed message,
a state that does not fit) is reported to the source, which runs on, and
ends this process with status 1 without the guest having run here.

Options given here override where the machine meets this host: `--serial`,
`--api-socket`, `--disk` (the same disks, at other paths: one per source
disk, in order), `--net` (this host's TAP devices; the MACs stay the
guest's). `--memory` and `--cpus`, if given, must match the source's.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import sys
import time

from .._log import get_logger
from . import stream
from .dirty import PAGE
from .stream import Channel, MigrationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..disk.backend import BlockBackend
    from ..memory import Region
    from ..vmm.config import SerialConfig, VmConfig
    from ..vmm.device_config import DiskConfig, NetConfig
    from ..vmm.machine import Machine as _Machine
    from ..vmm.pvm import PvmAssist
    from ..vmm.restore import SavedState
    from ..vmm.vmstate import PvmState
    from .disk_copy import DiskCopyTarget

log = get_logger(__name__)

ACCEPT_TIMEOUT = None  # wait for the source as long as it takes (Ctrl-C ends it)
STREAM_TIMEOUT = 60.0  # seconds of silence from the source before giving up


@dataclasses.dataclass
class IncomingOptions:
    uri: str
    serial: SerialConfig | None = None
    api_socket: str | None = None
    disks: Sequence[DiskConfig] = ()
    nets: Sequence[NetConfig] = ()
    memory: int | None = None
    cpus: int | None = None


class _HelloHeader:
    """The HELLO config as `config_from_header` reads a snapshot's."""

    def __init__(self, header: object, peer: str) -> None:
        self._header = header
        self.peer = peer

    def header(self) -> dict[str, object]:
        if not isinstance(self._header, dict):
            raise self.error("the configuration is not a JSON object")
        return self._header

    def error(self, message: str) -> MigrationError:
        return MigrationError(f"{self.peer}: {message}")


def machine_class() -> type[_Machine]:
    """IncomingMachine, defined on first use (the Machine module is heavy)."""
    from ..vmm.machine import Machine

    class IncomingMachine(Machine):
        """A Machine whose memory and state arrive over a migration stream."""

        boots_kernel = False

        def __init__(self, cfg: VmConfig, regions: Sequence[tuple[int, int]], error: _HelloHeader,
                     copies: DiskCopyTarget | None = None) -> None:
            self._copies = copies
            self._copy_index = 0
            self._saved_regions = list(regions)
            self._error = error
            self._pvm_state: PvmState | None = None
            self.notes: list[str] = []
            super().__init__(cfg)

        def _read_images(self) -> tuple[bytes, bytes | None]:
            return b"", None

        def _ram_regions(self, size: int) -> list[Region]:
            from ..vmm.restore import check_layout

            check_layout(self._saved_regions, size, self._error.error)
            return super()._ram_regions(size)

        def _setup_firmware_and_kernel(self, kernel: bytes, initrd: bytes | None) -> None:
            pass  # the firmware tables and the kernel arrive with the memory

        def _create_vcpus(self) -> None:
            for i in range(self.cfg.cpus):
                self.vcpus.append(self.vm.create_vcpu(i))

        def _open_disk(self, d: DiskConfig) -> BlockBackend:  # type: ignore[override]
            from .disks import PendingDisk

            if self._copies is not None and not d.readonly:
                # A disk copied over the stream: this side's own new file, open now.
                i, self._copy_index = self._copy_index, self._copy_index + 1
                return self._copies.open(i, d.path, d.readonly, d.format, d.serial or None)
            return PendingDisk(d.path, d.readonly, d.format, d.serial or None)

        def load(self, saved: SavedState, disk_paths: dict[str, str], kick: bool = True) -> None:
            """The VM's, vCPUs' and devices' state (the disks are open).
            `kick=False` leaves the queues alone (post-copy: guest memory
            must not be touched before the fault server runs)."""
            from ..vmm.restore import DeviceLoader, restore_vcpu, restore_vm

            restore_vm(self.vm, saved.vm, has_pit2=not self.pvm, notes=self.notes)
            for vcpu, st in zip(self.vcpus, saved.vcpus):
                restore_vcpu(vcpu, st, self.notes)
            loader = DeviceLoader(self, saved, disk_paths)
            loader.load(super()._pvm_assist)
            self._pvm_state = loader.pvm_state
            if kick and self.virtio is not None:
                self.virtio.kick_all()

        def _pvm_assist(self) -> PvmAssist:
            assist = super()._pvm_assist()
            if self._pvm_state is not None:
                assist.restore(self._pvm_state)
            return assist

    return IncomingMachine


class Incoming:
    """One incoming migration, from listening to a VM ready to run."""

    def __init__(self, opt: IncomingOptions) -> None:
        self.opt = opt
        self.m: _Machine | None = None
        self.ch: Channel | None = None
        self.pending: list[tuple[int, int]] = []  # post-copy: runs the source still has
        self.pages = 0
        self.disk_paths: dict[str, str] = {}
        self.copies: DiskCopyTarget | None = None
        self.disk_bytes = 0
        self._regions: list[tuple[int, int, memoryview]] = []

    # --- connection -------------------------------------------------------------
    def accept(self) -> Channel:
        host, port = stream.parse_uri(self.opt.uri)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as ls:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                ls.bind((host, port))
            except OSError as e:
                raise MigrationError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
            ls.listen(1)
            _preload()  # while nobody waits: the source's HELLO then only builds
            log.warning("waiting for an incoming migration on %s:%d", host, port)
            sock, addr = ls.accept()
        sock.settimeout(STREAM_TIMEOUT)
        # Replies are small and follow other small writes: without this,
        # Nagle holds each one until the source's delayed ACK (40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ch = Channel(sock, f"the source {addr[0]}:{addr[1]}")
        return self.ch

    # --- HELLO: build the machine -------------------------------------------------
    def build(self, hello: dict[str, object]) -> _Machine:
        from ..vmm.config import ConfigError
        from ..vmm.snapshot_header import config_from_header

        ch = self.ch
        assert ch is not None
        if hello.get("magic") != stream.MAGIC:
            raise MigrationError(f"{ch.peer} is not a pyvirt migration source")
        if hello.get("protocol") != stream.PROTOCOL:
            raise MigrationError(f"{ch.peer} speaks migration protocol {hello.get('protocol')!r}; this pyvirt "
                                 f"speaks {stream.PROTOCOL}: use the same pyvirt version on both hosts")
        source = _HelloHeader(hello.get("config"), ch.peer)
        cfg, regions, _info = config_from_header(source)  # type: ignore[arg-type]
        self._override(cfg)
        if hello.get("copy_disks") is not None:
            self._create_copies(cfg, hello["copy_disks"])
        from ..kvm import KvmError
        from ..vmm.machine import VmError

        try:
            self.m = machine_class()(cfg, regions, source, self.copies)  # type: ignore[call-arg, arg-type]
        except (ConfigError, KvmError, VmError) as e:
            raise MigrationError(f"cannot build the VM here: {e}") from e
        self._regions = [(r.gpa, r.end, r.view) for r in self.m.mem.regions]
        # What loading the state needs, imported now: at switchover the guest waits.
        from ..devices.virtio import blk  # noqa: F401
        from ..vmm import restore, state_codec  # noqa: F401
        from . import disks  # noqa: F401

        return self.m

    def _create_copies(self, cfg: VmConfig, spec: object) -> None:
        """Create this side's files for the disks the source copies (its writable ones)."""
        from .disk_copy import DiskCopyTarget, create_target

        writable = [d for d in cfg.disks if not d.readonly]
        if not isinstance(spec, list) or len(spec) != len(writable):
            raise MigrationError("the source's disk-copy list does not match its writable disks")
        self.copies = DiskCopyTarget()
        for d, item in zip(writable, spec):
            if not (isinstance(item, dict) and type(item.get("size")) is int and item.get("format") in ("raw", "qcow2")):
                raise MigrationError("the source's disk-copy list has a malformed entry")
            if item["size"] <= 0 or item["size"] % 512:
                raise MigrationError(f"the source's disk {d.path} has an invalid size {item['size']}")
            create_target(d.path, item["size"], item["format"])
            self.copies.created.append(d.path)
            d.format = item["format"]
            log.warning("copying disk %s here (%d MiB)", d.path, item["size"] >> 20)

    def _override(self, cfg: VmConfig) -> None:
        o = self.opt
        if o.memory is not None and o.memory != cfg.memory:
            raise MigrationError(f"the source VM has {cfg.memory >> 20} MiB of memory, --memory says "
                                 f"{o.memory >> 20} MiB")
        if o.cpus is not None and o.cpus != cfg.cpus:
            raise MigrationError(f"the source VM has {cfg.cpus} vCPUs, --cpus says {o.cpus}")
        if o.serial is not None:
            cfg.serial = o.serial
        cfg.api_socket = o.api_socket
        if o.disks:
            if len(o.disks) != len(cfg.disks):
                raise MigrationError(f"the source VM has {len(cfg.disks)} disks, --disk gives {len(o.disks)}")
            for i, (mine, theirs) in enumerate(zip(o.disks, cfg.disks)):
                self.disk_paths[theirs.path] = mine.path
                disk = copy.copy(theirs)
                disk.path = mine.path
                cfg.disks[i] = disk
        if o.nets:
            if len(o.nets) != len(cfg.nets):
                raise MigrationError(f"the source VM has {len(cfg.nets)} NICs, --net gives {len(o.nets)}")
            for i, (my_nic, their_nic) in enumerate(zip(o.nets, cfg.nets)):
                nic = copy.copy(their_nic)
                nic.tap = my_nic.tap
                cfg.nets[i] = nic

    # --- receiving ------------------------------------------------------------------
    def _ram(self, gpa: int, length: int) -> memoryview:
        """The destination's guest memory for a run the source sent, checked.
        (Called once per run, up to 16384 times a round: kept lean.)"""
        if gpa % PAGE or length % PAGE or length == 0:
            raise MigrationError(f"the source sent memory at {gpa:#x}+{length:#x}: not whole pages")
        for start, end, view in self._regions:
            if start <= gpa and gpa + length <= end:
                return view[gpa - start:gpa - start + length]
        raise MigrationError(f"the source sent memory at {gpa:#x}+{length:#x}, outside the guest's RAM")

    def receive(self) -> dict[str, object]:
        """Memory until COMPLETE; returns the STATE message."""
        ch = self.ch
        assert ch is not None
        state: dict[str, object] | None = None
        while True:
            kind, crc, length = ch.recv_frame("receiving guest memory")
            if kind == stream.PAGES:
                self.pages += ch.recv_pages(length, self._ram, "receiving guest memory")
            elif kind == stream.DISK and self.copies is not None:
                self.disk_bytes += self.copies.receive(ch, length)
            elif kind == stream.STATE:
                state = ch.recv_json(kind, crc, length, "receiving the VM's state")
            elif kind == stream.POSTCOPY:
                msg = ch.recv_json(kind, crc, length, "receiving the post-copy page list")
                self.pending = self._pending_runs(msg.get("pages"))
            elif kind == stream.COMPLETE:
                ch.recv_json(kind, crc, length, "receiving the end of the memory")
                if state is None:
                    raise MigrationError(f"{ch.peer} completed the migration without sending the VM's state")
                return state
            elif kind == stream.ROUND:
                ch.recv_json(kind, crc, length, "receiving the end of a round")
                ch.send_json(stream.ROUND, {})  # all of it is in guest memory now
            else:
                if kind == stream.ERROR:
                    ch.recv_json(kind, crc, length, "receiving guest memory")
                raise MigrationError(f"{ch.peer} sent {stream.NAMES[kind]} while sending memory")

    def _pending_runs(self, text: object) -> list[tuple[int, int]]:
        """The post-copy page set as runs, each checked to lie in guest RAM."""
        from .dirty import decode_pages, page_runs

        assert self.m is not None
        top = max(r.end for r in self.m.mem.regions) // PAGE
        if not isinstance(text, str):
            raise MigrationError("the post-copy page set is missing")
        try:
            runs = page_runs(decode_pages(text, top))
        except ValueError as e:
            raise MigrationError(f"the post-copy page set: {e}") from e
        for gpa, length in runs:
            self._ram(gpa, length)
        return runs

    def activate(self, state: dict[str, object]) -> None:
        """Open the disks and load the state (the source has let them go)."""
        from ..disk import DiskError
        from ..kvm import KvmError
        from ..vmm.restore import SavedState
        from .disks import activate

        m = self.m
        assert m is not None and self.ch is not None
        peer = self.ch.peer

        def error(message: str) -> MigrationError:
            return MigrationError(f"the state from {peer}: {message}")

        vcpus = state.get("vcpus")
        if not isinstance(vcpus, list):
            raise error("has no vCPU list")
        t0 = time.monotonic()
        saved = SavedState(state.get("vm"), list(enumerate(vcpus)), state.get("devices"), m.cfg.cpus, error)
        t1 = time.monotonic()
        try:
            if self.copies is not None:
                self.copies.flush()
            activate(m)
            t2 = time.monotonic()
            m.load(saved, self.disk_paths, kick=not self.pending)  # type: ignore[attr-defined]
            log.info("state decoded in %.1f ms, disks opened in %.1f ms, loaded in %.1f ms", (t1 - t0) * 1000,
                     (t2 - t1) * 1000, (time.monotonic() - t2) * 1000)
        except DiskError as e:
            raise MigrationError(f"cannot open the disks here: {e}") from e
        except KvmError as e:
            raise MigrationError(f"KVM refused the saved state: {e}") from e
        for note in m.notes:  # type: ignore[attr-defined]
            log.warning("%s", note)


def _preload() -> None:
    """Import what building and loading the VM needs."""
    machine_class()
    from ..devices.virtio import blk, net, queue  # noqa: F401
    from ..vmm import restore, snapshot_header, state_codec  # noqa: F401
    from . import disks  # noqa: F401


def run_incoming(opt: IncomingOptions) -> int:
    """`pyvirt run --incoming`: receive the VM, then run it; the exit status."""
    inc = Incoming(opt)
    start = 0.0
    try:
        ch = inc.accept()
    except MigrationError as e:
        print(f"pyvirt: {e}", file=sys.stderr)
        return 1
    m = None
    postcopy = None
    try:
        try:
            hello = ch.expect(stream.HELLO, "waiting for the source to describe the VM")
            start = time.monotonic()
            m = inc.build(hello)
            if hello.get("postcopy") is True:
                from .postcopy import PostcopyDestination

                postcopy = PostcopyDestination(m, ch)
            ch.send_json(stream.WELCOME, {})
            state = inc.receive()
            if postcopy is not None:
                if inc.pending:
                    postcopy.start(inc.pending)
                else:
                    postcopy.not_needed()
                    postcopy = None
            inc.activate(state)
            ch.send_json(stream.READY, {})
            ch.expect(stream.GO, "waiting for the source to hand over the VM")
            ch.send_json(stream.STARTED, {})
        except MigrationError as e:
            # Disks first: the source reopens them once this side is gone.
            if postcopy is not None:
                postcopy.abort()
            if m is not None:
                m.close()
                m = None
            if inc.copies is not None:
                inc.copies.remove_created()
            ch.send_error(str(e))
            raise
    except MigrationError as e:
        print(f"pyvirt: migration failed: {e}; the VM did not run here", file=sys.stderr)
        if postcopy is not None:
            postcopy.abort()
        if m is not None:
            m.close()
        ch.close()
        return 1
    if postcopy is not None:
        postcopy.go()  # the fault server reads the socket from now on
        if m.virtio is not None:
            m.virtio.kick_all()
        log.info("post-copy: %d pages come from the source on demand",
                 sum(n for _, n in inc.pending) // PAGE)
    ch.close()
    log.info("received %d pages in %.2f s; the VM runs here now", inc.pages, time.monotonic() - start)
    _announce(m)
    try:
        return m.run()
    finally:
        m.close()


def _announce(m: _Machine) -> None:
    """RARP for every NIC, in the background while the guest runs."""
    from ..net.announce import announce_in_background

    nics = []
    for dev in m.virtio.devices if m.virtio is not None else ():
        if dev.name == "net":
            backend = dev.backend  # type: ignore[attr-defined]
            nics.append((lambda frame, b=backend: b.send([memoryview(bytes(12) + frame)]), bytes(dev.mac)))  # type: ignore[attr-defined]
    if nics:
        announce_in_background(nics)
