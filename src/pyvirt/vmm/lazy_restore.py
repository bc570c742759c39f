"""Lazy restore of a compressed snapshot: guest pages are decompressed when first touched.

An uncompressed snapshot's memory is mapped from the file (MAP_PRIVATE), so
it loads lazily for free. A compressed one (zstd, lz4) cannot be mapped:
without `--lazy` the restore decompresses all of it before the guest runs.
With `--lazy` the guest runs at once: its RAM is registered with
userfaultfd, and a page-server process (this module's `serve`, run as
`python -m pyvirt.vmm.lazy_restore`) decompresses the run holding each
page the guest (or a device) touches, installs it with UFFDIO_COPY, zero
pages for pages the snapshot does not hold, and meanwhile decompresses the
rest in the background, so every page is in after a while and the server
exits. The server is a process of its own for the reason post-copy's is
(migration/postcopy.py): a thread of the VM process touching a missing
page holds the GIL while it waits.

If the server fails (a run fails its CRC: the file is corrupt), the VM
cannot go on and is stopped with the reason.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import threading

from .._log import get_logger

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..memory import Region
    from ..memory.userfault import UserFault
    from .machine import Machine
    from .snapshot import MemoryRun, Snapshot

log = get_logger(__name__)

PAGE = 4096


class LazyMemory:
    """The VM process's side: register the RAM, start the server, watch it."""

    def __init__(self, path: str, regions: list[Region]) -> None:
        from ..memory.userfault import UserFault, available
        from .snapshot import SnapshotError

        why = available()
        if why is not None:
            raise SnapshotError(f"--lazy needs userfaultfd: {why}")
        self.uffd: UserFault | None = UserFault()
        for r in regions:
            self.uffd.register(r.host_address(), r.size)
        spec = {"path": os.path.abspath(path), "uffd": self.uffd.fileno(),
                "regions": [[r.gpa, r.host_address(), r.size] for r in regions]}
        self.proc = subprocess.Popen([sys.executable, "-m", "pyvirt.vmm.lazy_restore"], stdin=subprocess.PIPE,
                                     pass_fds=(self.uffd.fileno(),), close_fds=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec).encode())
        self.proc.stdin.close()

    def watch(self, m: Machine) -> None:
        threading.Thread(target=self._watch, args=(m,), name="lazy-restore-watch", daemon=True).start()

    def _watch(self, m: Machine) -> None:
        from . import exit_status

        status = self.proc.wait()
        if status != 0:
            m.stop(exit_status.ERROR, "the lazy restore's page server failed (see its message): guest memory "
                                      "is incomplete")
        else:
            log.info("lazy restore: every page is in")
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.uffd is not None:
            self.uffd.close()
            self.uffd = None


class PageServer:
    """Serves a snapshot's compressed memory to the VM's page faults."""

    def __init__(self, snap: Snapshot, uffd: UserFault, regions: list[tuple[int, int, int]]) -> None:
        from ..memory.userfault import AddressMap

        self.snap = snap
        self.uffd = uffd
        self.map = AddressMap(regions)
        self.runs: list[MemoryRun] = snap.memory_runs([(g, size) for g, _, size in regions])
        self.starts = [r.gpa for r in self.runs]
        self.done = [False] * len(self.runs)
        self.faults = self.zero = 0

    def install(self, i: int) -> None:
        run = self.runs[i]
        if not self.done[i]:
            self.done[i] = True
            data = self.snap.read_run(run)  # CRC-checked, decompressed
            assert data is not None
            self.uffd.copy(self.map.hva(run.gpa, run.length), data)

    def on_fault(self, address: int) -> None:
        gpa = self.map.gpa(address)
        if gpa is None:
            return
        self.faults += 1
        i = bisect.bisect_right(self.starts, gpa) - 1
        if i >= 0 and gpa < self.runs[i].gpa + self.runs[i].length:
            self.install(i)
            self.uffd.wake(address & ~(PAGE - 1), PAGE)  # installed before, by the background pass
        elif self.uffd.zeropage(address & ~(PAGE - 1), PAGE):
            self.zero += 1
        else:
            self.uffd.wake(address & ~(PAGE - 1), PAGE)

    def run(self) -> None:
        import select

        from ..memory.userfault import PageFault

        nxt = 0
        fd = self.uffd.fileno()
        while True:
            busy = nxt < len(self.runs)
            readable, _, _ = select.select([fd], [], [], 0 if busy else None)
            if readable:
                for ev in self.uffd.read_events():
                    if isinstance(ev, PageFault):
                        self.on_fault(ev.address)
                continue
            if not busy:
                return  # nothing left: the VM's memory is ordinary from now on
            self.install(nxt)
            nxt += 1
            while nxt < len(self.runs) and self.done[nxt]:
                nxt += 1


def serve() -> int:
    from ..memory.userfault import UserFault
    from .snapshot import Snapshot, SnapshotError

    spec = json.loads(sys.stdin.buffer.read())
    uffd = UserFault.from_fd(spec["uffd"])
    try:
        with Snapshot.open(spec["path"]) as snap:
            server = PageServer(snap, uffd, [tuple(r) for r in spec["regions"]])  # type: ignore[misc]
            server.run()
    except (SnapshotError, OSError, ValueError) as e:
        print(f"pyvirt: lazy restore: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(serve())
