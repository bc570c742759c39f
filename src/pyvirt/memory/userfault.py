"""userfaultfd: serve a range's missing pages from user space.

The building block of post-copy live migration and lazy snapshot restore:
guest memory is mapped empty and registered in "missing" mode; the first
touch of a page (by a vCPU through KVM, by a device model, by the VMM) stops
the toucher and queues a `PageFault` on the userfaultfd; a server reads it,
fetches the page (from the migration source, from the snapshot file) and
installs it atomically with `copy()` (UFFDIO_COPY), which also wakes the
toucher. Mirrors <linux/userfaultfd.h> and Documentation/admin-guide/mm/userfaultfd.rst.

    with UserFault() as uffd:
        uffd.register(addr, size)          # missing mode
        for ev in uffd.read_events():      # poll/select on uffd.fileno() first
            if isinstance(ev, PageFault):
                uffd.copy(ev.address & ~(PAGE_SIZE - 1), page_bytes)

Where the fault server may run (checked by tests/unit/test_userfault.py):

- A Python thread that touches a registered, still-missing page *while
  holding the GIL* (memoryview or mmap slicing, struct.unpack_from,
  bytes(view)) blocks inside the page fault with the GIL held. A fault
  server written in Python in the same process then can never run again:
  deadlock. So VMM code must not touch lazily-restored guest memory directly
  until its pages are in.
- Faults taken inside a syscall that releases the GIL are safe with a server
  thread in the same process: KVM_RUN (the vCPU's accesses), os.write/os.preadv
  from or into guest memory (device I/O).
- A server in another process is always safe: pass the fd (subprocess
  `pass_fds`, fork, SCM_RIGHTS) and wrap it with `UserFault.from_fd()`. The
  userfaultfd keeps the address space it was created in: UFFDIO_COPY in the
  child fills the parent's pages (its *source* buffer is read from the
  child's own memory).

The descriptor must handle kernel-mode faults for KVM and syscalls to be
served, so `user_mode_only` (UFFD_USER_MODE_ONLY, the only kind an
unprivileged process may create when vm.unprivileged_userfaultfd=0) is off
by default.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import mmap
import os
import platform
import struct
from dataclasses import dataclass

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable

    _Pack = Callable[[int, int, int], bytes]  # (dst, offset into the source, length) -> ioctl struct

PAGE_SIZE = mmap.PAGESIZE

# --- ioctl numbers, from the _IOC macros of <asm-generic/ioctl.h> -----------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)


UFFDIO = 0xAA  # the ioctl "type" byte
UFFD_API = 0xAA  # the only API version

# ioctl nr values (_UFFDIO_*); bit `nr` of the `ioctls` masks says the ioctl is available
NR_REGISTER, NR_UNREGISTER, NR_WAKE, NR_COPY, NR_ZEROPAGE = 0x00, 0x01, 0x02, 0x03, 0x04
NR_WRITEPROTECT, NR_CONTINUE, NR_API = 0x06, 0x07, 0x3F

# Struct sizes: uffdio_api {api, features, ioctls: u64}; uffdio_range {start, len};
# uffdio_register {range, mode, ioctls}; uffdio_copy {dst, src, len, mode, s64 copy};
# uffdio_zeropage {range, mode, s64 zeropage}.
SIZEOF_API, SIZEOF_RANGE, SIZEOF_REGISTER, SIZEOF_COPY, SIZEOF_ZEROPAGE = 24, 16, 32, 40, 32

UFFDIO_API = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, NR_API, SIZEOF_API)
UFFDIO_REGISTER = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, NR_REGISTER, SIZEOF_REGISTER)
# _IOR although the kernel reads them: a historical slip the header keeps (see its comment).
UFFDIO_UNREGISTER = _ioc(_IOC_READ, UFFDIO, NR_UNREGISTER, SIZEOF_RANGE)
UFFDIO_WAKE = _ioc(_IOC_READ, UFFDIO, NR_WAKE, SIZEOF_RANGE)
UFFDIO_COPY = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, NR_COPY, SIZEOF_COPY)
UFFDIO_ZEROPAGE = _ioc(_IOC_READ | _IOC_WRITE, UFFDIO, NR_ZEROPAGE, SIZEOF_ZEROPAGE)
USERFAULTFD_IOC_NEW = _ioc(_IOC_NONE, UFFDIO, 0x00, 0)  # on /dev/userfaultfd

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFD_USER_MODE_ONLY = 1  # userfaultfd(2) flag

# uffdio_api.features bits (the ones a VMM cares about; the kernel reports all it has)
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12

# struct uffd_msg event types (they start at 0x12 on purpose)
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16

UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

MSG_SIZE = 32  # sizeof(struct uffd_msg), packed

# __NR_userfaultfd: x86_64 has its own table; arm64 and riscv64 use asm-generic's.
_SYSCALL_NR = {"x86_64": 323, "amd64": 323, "aarch64": 282, "arm64": 282, "riscv64": 282}

# EAGAIN without progress means a fork/mremap/munmap/madvise event is queued on
# the fd and the kernel refuses to fill pages until it is read; give up after this many tries.
_EAGAIN_RETRIES = 1000

_HINTS = {
    _errno.EPERM: "userfaultfd needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1 "
                  "(sysctl -w vm.unprivileged_userfaultfd=1), or read/write access to /dev/userfaultfd; "
                  "in a container, a seccomp profile that allows the userfaultfd syscall",
    _errno.ENOSYS: "this kernel has no userfaultfd (CONFIG_USERFAULTFD=n) or a seccomp filter hides it; "
                   "use a kernel built with CONFIG_USERFAULTFD=y",
    _errno.EMFILE: "the process is out of file descriptors; raise `ulimit -n`",
    _errno.ENFILE: "the system is out of file descriptors",
}


class UserFaultError(OSError):
    """A userfaultfd syscall or ioctl failed; the message names it and says what to do."""

    def __init__(self, request: str, errno: int, hint: str = "") -> None:
        msg = f"{request} failed: {os.strerror(errno)} (errno {errno})"
        hint = hint or _HINTS.get(errno, "")
        if hint:
            msg += f"; {hint}"
        super().__init__(errno, msg)
        self.request = request
        self.hint = hint

    def __str__(self) -> str:  # OSError's default shows "[Errno N]" again
        return self.args[1]


# --- events ------------------------------------------------------------------
@dataclass(frozen=True)
class PageFault:
    """A thread touched a registered page that is missing (or write-protected).

    `address` is page-aligned unless UFFD_FEATURE_EXACT_ADDRESS was asked for;
    `thread_id` is 0 unless UFFD_FEATURE_THREAD_ID was.
    """

    address: int
    flags: int
    thread_id: int = 0

    @property
    def write(self) -> bool:
        return bool(self.flags & UFFD_PAGEFAULT_FLAG_WRITE)

    @property
    def page(self) -> int:
        return self.address & ~(PAGE_SIZE - 1)


@dataclass(frozen=True)
class ForkEvent:
    """The process forked with the range registered; `ufd` is a new userfaultfd
    for the child, already installed in the reader's fd table: close it if unused."""

    ufd: int


@dataclass(frozen=True)
class RemapEvent:
    """mremap moved registered memory."""

    old: int
    new: int
    length: int


@dataclass(frozen=True)
class RemoveEvent:
    """madvise(MADV_DONTNEED/REMOVE) dropped pages of the range: they are missing again."""

    start: int
    end: int


@dataclass(frozen=True)
class UnmapEvent:
    """munmap removed registered memory."""

    start: int
    end: int


@dataclass(frozen=True)
class UnknownEvent:
    """An event type this module does not know (a newer kernel)."""

    event: int
    raw: bytes


UffdEvent = PageFault | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent | UnknownEvent

_MSG = struct.Struct("<BBHI24s")  # event, reserved1, reserved2, reserved3, arg union


def parse_events(data: bytes) -> list[UffdEvent]:
    """Decode a read() of the userfaultfd: whole 32-byte `struct uffd_msg`s."""
    if len(data) % MSG_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {MSG_SIZE}-byte uffd_msg records")
    out: list[UffdEvent] = []
    for off in range(0, len(data), MSG_SIZE):
        event, _, _, _, arg = _MSG.unpack_from(data, off)
        if event == UFFD_EVENT_PAGEFAULT:
            flags, address, ptid = struct.unpack_from("<QQI", arg)
            out.append(PageFault(address, flags, ptid))
        elif event == UFFD_EVENT_FORK:
            out.append(ForkEvent(struct.unpack_from("<I", arg)[0]))
        elif event == UFFD_EVENT_REMAP:
            out.append(RemapEvent(*struct.unpack_from("<QQQ", arg)))
        elif event == UFFD_EVENT_REMOVE:
            out.append(RemoveEvent(*struct.unpack_from("<QQ", arg)))
        elif event == UFFD_EVENT_UNMAP:
            out.append(UnmapEvent(*struct.unpack_from("<QQ", arg)))
        else:
            out.append(UnknownEvent(event, bytes(data[off : off + MSG_SIZE])))
    return out


# --- opening -----------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _open_fd(flags: int) -> int:
    """userfaultfd(2); on EPERM, /dev/userfaultfd (Linux 6.1+), whose file mode
    grants the right without CAP_SYS_PTRACE."""
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise UserFaultError("userfaultfd", _errno.ENOSYS, f"no syscall number known for {platform.machine()}")
    fd = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(flags))
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err == _errno.EPERM and os.path.exists("/dev/userfaultfd"):
        try:
            dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            pass  # report the syscall's EPERM, whose hint covers both ways in
        else:
            try:
                return fcntl.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
            except OSError:
                pass
            finally:
                os.close(dev)
    raise UserFaultError("userfaultfd", err)


def _check_range(what: str, address: int, length: int) -> None:
    """Reject what the kernel would with a bare EINVAL, naming the problem."""
    if address < 0 or address % PAGE_SIZE:
        raise ValueError(f"{what}: address {address:#x} is not a multiple of the page size ({PAGE_SIZE:#x})")
    if length <= 0 or length % PAGE_SIZE:
        raise ValueError(f"{what}: length {length:#x} is not a positive multiple of the page size ({PAGE_SIZE:#x})")
    if address + length > 1 << 64:
        raise ValueError(f"{what}: {address:#x}+{length:#x} wraps the address space")


def _source_address(src: "bytes | bytearray | memoryview | mmap.mmap | int", length: int | None,
                    ) -> tuple[int, int, object]:
    """(address, length, object to keep alive) of a copy source, without copying it."""
    if isinstance(src, int):
        if length is None:
            raise ValueError("copy from a raw address needs a length")
        return src, length, None
    view = memoryview(src)
    if not view.c_contiguous:
        raise ValueError("copy source must be a contiguous buffer")
    view = view.cast("B")
    n = len(view) if length is None else length
    if n > len(view):
        raise ValueError(f"copy of {n:#x} bytes from a {len(view):#x}-byte buffer")
    if view.readonly:
        if isinstance(src, bytes):
            # c_char_p points at the bytes object's own storage.
            ptr = ctypes.c_char_p(src)
            return ctypes.cast(ptr, ctypes.c_void_p).value or 0, n, ptr
        copied = ctypes.create_string_buffer(bytes(view[:n]), n)  # read-only non-bytes: one copy
        return ctypes.addressof(copied), n, copied
    shared = (ctypes.c_char * len(view)).from_buffer(view)
    return ctypes.addressof(shared), n, shared


class UserFault:
    """An open userfaultfd after the UFFDIO_API handshake.

    `features` asks for UFFD_FEATURE_* bits (EVENT_FORK needs CAP_SYS_PTRACE);
    `available_features` is what the kernel offers, `ioctls` the fd-wide ioctl bitmask.
    """

    def __init__(self, *, nonblocking: bool = True, cloexec: bool = True, user_mode_only: bool = False,
                 features: int = 0) -> None:
        flags = (os.O_NONBLOCK if nonblocking else 0) | (os.O_CLOEXEC if cloexec else 0)
        if user_mode_only:
            flags |= UFFD_USER_MODE_ONLY
        self.fd = _open_fd(flags)
        try:
            self.available_features, self.ioctls = self._handshake(features)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise
        self.features = features

    @classmethod
    def from_fd(cls, fd: int, features: int = 0) -> "UserFault":
        """Adopt a userfaultfd that already did the handshake (one passed to a
        fault-server process). Takes ownership: close() closes `fd`."""
        self = cls.__new__(cls)
        self.fd = fd
        self.features = features
        self.available_features = 0
        self.ioctls = 0
        return self

    def _handshake(self, features: int) -> tuple[int, int]:
        buf = bytearray(struct.pack("<QQQ", UFFD_API, features, 0))
        try:
            fcntl.ioctl(self.fd, UFFDIO_API, buf, True)
        except OSError as e:
            hint = ""
            if e.errno == _errno.EINVAL and features:
                hint = f"the kernel does not offer all of the requested features {features:#x}"
            elif e.errno == _errno.EPERM and features & UFFD_FEATURE_EVENT_FORK:
                hint = "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE"
            raise UserFaultError("UFFDIO_API", e.errno or _errno.EIO, hint) from e
        api, available, ioctls = struct.unpack("<QQQ", buf)
        if api != UFFD_API:
            raise UserFaultError("UFFDIO_API", _errno.EPROTO, f"the kernel answered API {api:#x}, not {UFFD_API:#x}")
        return available, ioctls

    # --- file -------------------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """Close the fd. Threads still waiting on a fault are woken, and the
        pages they wanted are then zero-filled as if never registered."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "UserFault":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _ioctl(self, name: str, request: int, buf: bytearray) -> None:
        if self.fd < 0:
            raise ValueError(f"{name} on a closed userfaultfd")
        # A bytearray of < 1024 bytes: fcntl copies it to a stack buffer, calls
        # ioctl with the GIL released, and copies the answer back even on error.
        fcntl.ioctl(self.fd, request, buf, True)

    # --- ranges -----------------------------------------------------------------
    def register(self, address: int, length: int, missing: bool = True, wp: bool = False,
                 minor: bool = False) -> int:
        """Register [address, address+length) and return the bitmask of ioctls
        usable on it (bit NR_COPY, NR_ZEROPAGE, ...). The range must be whole
        VMAs of anonymous, shmem or hugetlbfs memory."""
        _check_range("UFFDIO_REGISTER", address, length)
        mode = ((UFFDIO_REGISTER_MODE_MISSING if missing else 0) | (UFFDIO_REGISTER_MODE_WP if wp else 0)
                | (UFFDIO_REGISTER_MODE_MINOR if minor else 0))
        if not mode:
            raise ValueError("UFFDIO_REGISTER: choose at least one of missing, wp, minor")
        buf = bytearray(struct.pack("<QQQQ", address, length, mode, 0))
        try:
            self._ioctl("UFFDIO_REGISTER", UFFDIO_REGISTER, buf)
        except OSError as e:
            hint = ""
            if e.errno == _errno.EINVAL:
                hint = (f"{address:#x}+{length:#x} must lie in mapped memory of a kind userfaultfd supports "
                        "(private anonymous, shmem/memfd, hugetlbfs with huge-page alignment) in the "
                        "process that created this fd, and the mode must be one the kernel offers")
            elif e.errno == _errno.EBUSY:
                hint = "the range is already registered with another userfaultfd"
            elif e.errno == _errno.ENOMEM:
                hint = f"{address:#x}+{length:#x} is not entirely mapped"
            raise UserFaultError("UFFDIO_REGISTER", e.errno or _errno.EIO, hint) from e
        return struct.unpack_from("<Q", buf, 24)[0]

    def unregister(self, address: int, length: int) -> None:
        _check_range("UFFDIO_UNREGISTER", address, length)
        buf = bytearray(struct.pack("<QQ", address, length))
        try:
            self._ioctl("UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, buf)
        except OSError as e:
            raise UserFaultError("UFFDIO_UNREGISTER", e.errno or _errno.EIO) from e

    def wake(self, address: int, length: int) -> None:
        """Wake threads waiting on faults in the range (after DONTWAKE fills)."""
        _check_range("UFFDIO_WAKE", address, length)
        buf = bytearray(struct.pack("<QQ", address, length))
        try:
            self._ioctl("UFFDIO_WAKE", UFFDIO_WAKE, buf)
        except OSError as e:
            raise UserFaultError("UFFDIO_WAKE", e.errno or _errno.EIO) from e

    # --- filling pages ----------------------------------------------------------
    def copy(self, dst_address: int, src: "bytes | bytearray | memoryview | mmap.mmap | int",
             length: int | None = None, wake: bool = True) -> int:
        """Atomically install `length` bytes (default: all of `src`) of page
        contents at `dst_address` and wake the threads waiting on them.

        `src` is a buffer or an address in this process. Returns the bytes
        installed: pages that were already present (EEXIST, e.g. a racing
        fill) are skipped, so a single-page copy that lost the race returns 0.
        """
        addr, n, keep = _source_address(src, length)
        _check_range("UFFDIO_COPY", dst_address, n)
        mode = 0 if wake else UFFDIO_COPY_MODE_DONTWAKE
        try:
            return self._fill("UFFDIO_COPY", UFFDIO_COPY, dst_address, n,
                              lambda d, s_off, ln: struct.pack("<QQQQq", d, addr + s_off, ln, mode, 0), wake)
        finally:
            del keep  # the source buffer must outlive the ioctl

    def zeropage(self, address: int, length: int, wake: bool = True) -> int:
        """Map zero pages over the range (reads see zeros; the first write
        allocates). Returns the bytes mapped; present pages are skipped."""
        _check_range("UFFDIO_ZEROPAGE", address, length)
        mode = 0 if wake else UFFDIO_ZEROPAGE_MODE_DONTWAKE
        return self._fill("UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, address, length,
                          lambda d, s_off, ln: struct.pack("<QQQq", d, ln, mode, 0), wake)

    def _fill(self, name: str, request: int, dst: int, length: int, pack: "_Pack", wake: bool) -> int:
        """Run a COPY/ZEROPAGE to completion. Its last field returns the bytes
        done or -errno. A partial fill fails with EAGAIN (retry the rest); a
        page already present fails with EEXIST (skip it: someone filled it)."""
        done = installed = 0
        tries = 0
        while done < length:
            buf = bytearray(pack(dst + done, done, length - done))
            try:
                self._ioctl(name, request, buf)
                return installed + (length - done)
            except OSError as e:
                err = e.errno or _errno.EIO
                result = struct.unpack_from("<q", buf, len(buf) - 8)[0]
                if result > 0:  # progress before whatever stopped it
                    done += result
                    installed += result
                    tries = 0
                    if err == _errno.EAGAIN:
                        continue
                if err == _errno.EEXIST:
                    if wake:  # the filler may have used DONTWAKE; waking is harmless
                        self.wake(dst + done, PAGE_SIZE)
                    done += PAGE_SIZE
                    continue
                if err == _errno.EAGAIN:
                    tries += 1
                    if tries < _EAGAIN_RETRIES:
                        os.sched_yield()
                        continue
                    raise UserFaultError(name, err, "the address space is changing (a fork, mremap, munmap or "
                                         "madvise event is pending): read_events() and retry") from e
                hint = ""
                if err == _errno.ENOENT:
                    hint = f"{dst + done:#x} is not in a registered range (or its mapping changed)"
                elif err == _errno.ESRCH:
                    hint = "the process that owns this memory has exited"
                elif err == _errno.EFAULT and request == UFFDIO_COPY:
                    hint = "the source buffer is not readable"
                raise UserFaultError(name, err, hint) from e
        return installed

    # --- events -----------------------------------------------------------------
    def read_events(self, max_events: int = 64) -> list[UffdEvent]:
        """The queued events, oldest first. On a non-blocking fd, [] when none
        are queued; on a blocking one, waits for at least one."""
        if self.fd < 0:
            raise ValueError("read_events on a closed userfaultfd")
        try:
            data = os.read(self.fd, MSG_SIZE * max_events)
        except BlockingIOError:
            return []
        except OSError as e:
            raise UserFaultError("read(userfaultfd)", e.errno or _errno.EIO) from e
        return parse_events(data)


def available() -> str | None:
    """None when this process can use userfaultfd with kernel-mode faults
    (what KVM and syscalls need), else the reason."""
    try:
        UserFault().close()
    except UserFaultError as e:
        return str(e)
    except OSError as e:
        return f"userfaultfd: {e}"
    return None


class AddressMap:
    """Guest-physical <-> host-virtual addresses of guest RAM, for a fault
    server in another process: faults name host addresses of the VM
    process, the pages to install are known by guest address."""

    def __init__(self, regions: "list[tuple[int, int, int]]") -> None:
        self.regions = [(int(g), int(h), int(size)) for g, h, size in regions]  # (gpa, hva, size)
        self.top = max((g + size for g, _, size in self.regions), default=0)  # guest address after the last byte

    def hva(self, gpa: int, length: int = 1) -> int:
        """The host address of [gpa, gpa+length); ValueError outside one region."""
        for g, h, size in self.regions:
            if g <= gpa and gpa + length <= g + size:
                return h + gpa - g
        raise ValueError(f"guest memory {gpa:#x}+{length:#x} is outside guest RAM")

    def gpa(self, hva: int) -> "int | None":
        """The guest address of a host address, None outside guest RAM."""
        for g, h, size in self.regions:
            if h <= hva < h + size:
                return g + hva - h
        return None
