"""userfaultfd binding: ioctl numbers, event parsing, argument checks, and
the real thing (skipped, with the reason, where userfaultfd cannot be used).

Also the experiments behind the module docstring's claims: a fault server in
a child process can serve a parent that touches memory with the GIL held,
and a server thread in the same process cannot.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import select
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from pyvirt.memory import userfault as uf
from pyvirt.memory.userfault import (
    PAGE_SIZE, ForkEvent, PageFault, RemapEvent, RemoveEvent, UnknownEvent, UnmapEvent, UserFault,
    UserFaultError,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")
HEADER = Path("/usr/include/linux/userfaultfd.h")

# The values <linux/userfaultfd.h> gives on x86_64 (also printed by the C check below).
KNOWN = {
    "UFFDIO_API": 0xC018AA3F,
    "UFFDIO_REGISTER": 0xC020AA00,
    "UFFDIO_UNREGISTER": 0x8010AA01,
    "UFFDIO_WAKE": 0x8010AA02,
    "UFFDIO_COPY": 0xC028AA03,
    "UFFDIO_ZEROPAGE": 0xC020AA04,
}


def needs_uffd() -> None:
    why = uf.available()
    if why:
        pytest.skip(why)


def mapping(pages: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, pages * PAGE_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ref = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(ref)
    del ref  # release the buffer export so the mmap can be closed
    return m, addr


def wait_events(u: UserFault, timeout: float = 5.0) -> list[uf.UffdEvent]:
    r, _, _ = select.select([u], [], [], timeout)
    assert r, "no userfaultfd event within the timeout"
    return u.read_events()


# --- ioctl numbers -----------------------------------------------------------
def test_ioctl_numbers_match_the_header_values():
    for name, value in KNOWN.items():
        assert getattr(uf, name) == value, f"{name} = {getattr(uf, name):#x}, expected {value:#x}"
    assert uf.USERFAULTFD_IOC_NEW == 0xAA00


def _struct_size(header: str, name: str) -> int:
    body = re.search(r"struct %s \{(.*?)\n\};" % name, header, re.S)
    assert body, name
    text = re.sub(r"/\*.*?\*/", "", body.group(1), flags=re.S)
    return 8 * len(re.findall(r"__[us]64\s+\w+;", text)) + 16 * len(re.findall(r"struct uffdio_range\s+\w+;", text))


@pytest.mark.skipif(not HEADER.exists(), reason=f"{HEADER} is not installed")
def test_ioctl_numbers_from_parsing_the_installed_header():
    header = HEADER.read_text()
    nrs = {m[0]: int(m[1], 16) for m in re.findall(r"#define (_UFFDIO_\w+)\s+\((0x[0-9A-Fa-f]+)\)", header)}
    dirs = {"_IOR": 2, "_IOW": 1, "_IOWR": 3}
    found = 0
    for name, macro, nr_name, struct_name in re.findall(
            r"#define (UFFDIO_\w+)\s+(_IOW?R?)\(UFFDIO,\s*(_UFFDIO_\w+),\s*\\?\s*struct (\w+)\)", header):
        if name not in KNOWN:
            continue
        size = _struct_size(header, struct_name)
        assert getattr(uf, name) == uf._ioc(dirs[macro], 0xAA, nrs[nr_name], size), name
        found += 1
    assert found == len(KNOWN)


@pytest.mark.skipif(not (HEADER.exists() and shutil.which("gcc")), reason="needs gcc and the kernel headers")
def test_ioctl_numbers_agree_with_the_c_compiler(tmp_path):
    names = list(KNOWN) + ["UFFD_API", "UFFD_EVENT_PAGEFAULT", "UFFD_EVENT_REMOVE", "UFFD_EVENT_UNMAP"]
    prog = "#include <stdio.h>\n#include <sys/ioctl.h>\n#include <linux/userfaultfd.h>\nint main(void){\n"
    prog += "".join(f'printf("{n} %llu\\n", (unsigned long long)({n}));\n' for n in names)
    prog += 'printf("msg %zu\\n", sizeof(struct uffd_msg)); return 0;}\n'
    (tmp_path / "c.c").write_text(prog)
    subprocess.run(["gcc", "-o", str(tmp_path / "c"), str(tmp_path / "c.c")], check=True)
    out = dict(line.split() for line in subprocess.run([str(tmp_path / "c")], capture_output=True, text=True,
                                                       check=True).stdout.splitlines())
    for n in names:
        assert getattr(uf, n) == int(out[n]), n
    assert uf.MSG_SIZE == int(out["msg"])


# --- event parsing (no kernel) -------------------------------------------------
def _msg(event: int, arg: bytes) -> bytes:
    return struct.pack("<BBHI", event, 0, 0, 0) + arg.ljust(24, b"\0")


def test_parse_events_decodes_every_kind():
    data = (_msg(0x12, struct.pack("<QQI", 1, 0x7F0000001000, 42))
            + _msg(0x13, struct.pack("<I", 9))
            + _msg(0x14, struct.pack("<QQQ", 0x1000, 0x9000, 0x2000))
            + _msg(0x15, struct.pack("<QQ", 0x4000, 0x6000))
            + _msg(0x16, struct.pack("<QQ", 0x8000, 0xA000))
            + _msg(0x30, b"x"))
    events = uf.parse_events(data)
    assert events[:5] == [PageFault(0x7F0000001000, 1, 42), ForkEvent(9), RemapEvent(0x1000, 0x9000, 0x2000),
                          RemoveEvent(0x4000, 0x6000), UnmapEvent(0x8000, 0xA000)]
    assert events[0].write and events[0].page == 0x7F0000001000
    assert isinstance(events[5], UnknownEvent) and events[5].event == 0x30


def test_parse_events_rejects_a_torn_record():
    with pytest.raises(ValueError, match="32-byte"):
        uf.parse_events(bytes(33))


# --- argument checks happen before any ioctl ----------------------------------------
@pytest.fixture
def no_ioctl(monkeypatch):
    """A UserFault on /dev/null whose ioctls fail the test if ever issued."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"ioctl issued: {args}")
    monkeypatch.setattr(uf.fcntl, "ioctl", forbidden)
    u = UserFault.from_fd(os.open(os.devnull, os.O_RDWR))
    yield u
    u.close()


@pytest.mark.parametrize("call", [
    lambda u: u.register(PAGE_SIZE + 1, PAGE_SIZE),
    lambda u: u.register(PAGE_SIZE, PAGE_SIZE - 1),
    lambda u: u.register(PAGE_SIZE, 0),
    lambda u: u.register(PAGE_SIZE, PAGE_SIZE, missing=False),
    lambda u: u.unregister(3, PAGE_SIZE),
    lambda u: u.wake(PAGE_SIZE, 100),
    lambda u: u.copy(PAGE_SIZE + 8, bytes(PAGE_SIZE)),
    lambda u: u.copy(PAGE_SIZE, bytes(100)),
    lambda u: u.copy(PAGE_SIZE, bytes(PAGE_SIZE), 2 * PAGE_SIZE),
    lambda u: u.copy(PAGE_SIZE, 0x1000),
    lambda u: u.zeropage(-PAGE_SIZE, PAGE_SIZE),
    lambda u: u.zeropage(PAGE_SIZE, PAGE_SIZE + 512),
])
def test_bad_ranges_raise_value_error_before_any_ioctl(no_ioctl, call):
    with pytest.raises(ValueError):
        call(no_ioctl)


def test_error_messages_say_what_to_do():
    e = UserFaultError("userfaultfd", 1)
    assert isinstance(e, OSError) and e.errno == 1
    assert "CAP_SYS_PTRACE" in str(e) and "vm.unprivileged_userfaultfd=1" in str(e)
    assert "CONFIG_USERFAULTFD" in str(UserFaultError("userfaultfd", 38))


# --- the real thing ---------------------------------------------------------
def test_api_handshake():
    needs_uffd()
    with UserFault() as u:
        assert u.fileno() >= 0
        assert u.ioctls & (1 << uf.NR_REGISTER) and u.ioctls & (1 << uf.NR_UNREGISTER)
        assert u.ioctls & (1 << uf.NR_API)
        assert u.available_features & uf.UFFD_FEATURE_EVENT_REMOVE  # Linux 4.11+
        assert u.read_events() == []  # non-blocking: nothing queued
    assert u.fileno() == -1


def test_fault_copy_zeropage_unregister():
    needs_uffd()
    pages = 4
    m, addr = mapping(pages)
    view = memoryview(m)
    r, w = os.pipe()
    try:
        with UserFault() as u:
            ioctls = u.register(addr, pages * PAGE_SIZE)
            assert ioctls & (1 << uf.NR_COPY) and ioctls & (1 << uf.NR_ZEROPAGE) and ioctls & (1 << uf.NR_WAKE)

            # write() reads the page inside the syscall, with the GIL released:
            # the fault queues an event and this thread can serve it.
            written: list[int] = []
            t = threading.Thread(target=lambda: written.append(os.write(w, view[PAGE_SIZE: 2 * PAGE_SIZE])))
            t.start()
            events = wait_events(u)
            assert len(events) == 1 and isinstance(events[0], PageFault)
            assert events[0].page == addr + PAGE_SIZE and not events[0].write
            page = bytes(range(256)) * (PAGE_SIZE // 256)
            assert u.copy(addr + PAGE_SIZE, page) == PAGE_SIZE
            t.join(5)
            assert not t.is_alive() and written == [PAGE_SIZE]
            assert os.read(r, 2 * PAGE_SIZE) == page

            # A page already present: EEXIST is not an error, nothing is installed.
            assert u.copy(addr + PAGE_SIZE, b"\xff" * PAGE_SIZE) == 0
            assert m[PAGE_SIZE: 2 * PAGE_SIZE] == page

            assert u.zeropage(addr, PAGE_SIZE) == PAGE_SIZE
            assert u.zeropage(addr, PAGE_SIZE) == 0
            assert m[:PAGE_SIZE] == bytes(PAGE_SIZE)

            # Across present and missing pages: present ones are skipped, the
            # missing ones get their own part of the source.
            src = bytearray(os.urandom(3 * PAGE_SIZE))
            assert u.copy(addr, src) == PAGE_SIZE
            assert m[2 * PAGE_SIZE: 3 * PAGE_SIZE] == src[2 * PAGE_SIZE:]
            assert m[:PAGE_SIZE] == bytes(PAGE_SIZE)

            # From a raw address, without waking anyone, then an explicit wake.
            buf = ctypes.create_string_buffer(b"\x5a" * PAGE_SIZE, PAGE_SIZE)
            assert u.copy(addr + 3 * PAGE_SIZE, ctypes.addressof(buf), PAGE_SIZE, wake=False) == PAGE_SIZE
            u.wake(addr + 3 * PAGE_SIZE, PAGE_SIZE)
            assert m[3 * PAGE_SIZE:] == b"\x5a" * PAGE_SIZE

            u.unregister(addr, pages * PAGE_SIZE)
            m.madvise(mmap.MADV_DONTNEED)
            assert m[:8] == bytes(8)  # no longer registered: an ordinary zero-fill fault
            with pytest.raises(UserFaultError, match="UFFDIO_COPY"):
                u.copy(addr, bytes(PAGE_SIZE))  # not registered any more: ENOENT
    finally:
        view.release()
        os.close(r)
        os.close(w)
        m.close()


def test_register_outside_a_mapping_says_so():
    needs_uffd()
    m, addr = mapping(1)
    m.close()
    with UserFault() as u, pytest.raises(UserFaultError, match="UFFDIO_REGISTER") as e:
        u.register(addr, PAGE_SIZE)
    assert e.value.hint


# --- where the fault server may run ------------------------------------------
CHILD_SERVER = textwrap.dedent("""
    import select, signal, sys
    from pyvirt.memory.userfault import PAGE_SIZE, PageFault, UserFault
    fd, base, pages = map(int, sys.argv[1:4])
    # Exiting closes the last reference to the fd, which releases a stuck parent.
    signal.alarm(30)
    u = UserFault.from_fd(fd)
    served = 0
    while served < pages:
        select.select([u], [], [])
        for ev in u.read_events():
            if isinstance(ev, PageFault):
                index = (ev.page - base) // PAGE_SIZE
                u.copy(ev.page, bytes([index + 1]) * PAGE_SIZE)   # only the server knows this pattern
                served += 1
    print(served)
""")


def test_child_process_serves_faults_taken_with_the_gil_held():
    """The parent reads its own registered memory with plain mmap slicing
    (a memcpy with the GIL held); a child process holding the same uffd
    fills the pages. UFFDIO_COPY in the child acts on the parent's memory."""
    needs_uffd()
    pages = 8
    m, addr = mapping(pages)
    u = UserFault()
    u.register(addr, pages * PAGE_SIZE)
    child = subprocess.Popen([sys.executable, "-c", CHILD_SERVER, str(u.fileno()), str(addr), str(pages)],
                             pass_fds=[u.fileno()], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": SRC})
    u.close()  # the child's copy keeps the context; if the child dies, our faults are released
    try:
        for i in range(pages):
            assert m[i * PAGE_SIZE: (i + 1) * PAGE_SIZE] == bytes([i + 1]) * PAGE_SIZE, f"page {i}"
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0 and out.strip() == str(pages)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        m.close()


SAME_PROCESS = textwrap.dedent("""
    import ctypes, mmap, select, threading, time
    from pyvirt.memory.userfault import PAGE_SIZE, UserFault
    m = mmap.mmap(-1, PAGE_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ref = ctypes.c_char.from_buffer(m)
    addr = ctypes.addressof(ref)
    u = UserFault()
    u.register(addr, PAGE_SIZE)
    def serve():
        select.select([u], [], [])      # returns in C when the fault arrives, then needs the GIL
        u.read_events()
        u.copy(addr, b"x" * PAGE_SIZE)
        print("served", flush=True)
    threading.Thread(target=serve, daemon=True).start()
    time.sleep(0.2)
    print("touching", flush=True)
    m[:1]                               # memcpy with the GIL held: blocks in the fault
    print("done", flush=True)
""")


def test_same_process_server_thread_deadlocks_on_a_gil_holding_touch():
    """The other half of the claim: the same setup with the server as a thread
    of the faulting process never completes (killed after 3 s)."""
    needs_uffd()
    with pytest.raises(subprocess.TimeoutExpired) as e:
        subprocess.run([sys.executable, "-c", SAME_PROCESS], stdout=subprocess.PIPE,
                       env={**os.environ, "PYTHONPATH": SRC}, timeout=3)
    out = e.value.stdout or b""
    out = out.decode() if isinstance(out, bytes) else out
    assert "touching" in out and "served" not in out and "done" not in out
