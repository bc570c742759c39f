"""TAP devices: the host end of a guest's network card.

A TAP is a virtual Ethernet interface whose "wire" is a file descriptor:
each write() injects one frame into the host's network stack, each read()
returns one frame the host sent to the interface. pyvirt opens it with
IFF_VNET_HDR and a 12-byte header size, so every frame on the fd carries
the same `struct virtio_net_hdr_v1` the guest's driver uses, and offloads
(checksum, TSO) pass between guest and host untouched.

Who deletes the interface. `Tap.open` checks /sys/class/net/NAME first:

- NAME did not exist (or was a `%d` template): TUNSETIFF creates it, not
  persistent, and the kernel deletes it when the last fd closes, so a VMM
  that dies without cleaning up leaves nothing behind. `close()` only makes
  sure it was not made persistent meanwhile (TUNSETPERSIST 0).
- NAME existed (`ip tuntap add NAME mode tap`, made by an administrator or
  pyvirtd so an unprivileged VMM can use it): pyvirt attaches and, at
  close, leaves the interface in place with its offloads switched back off.
  Attaching turns its vnet_hdr mode on (the kernel keeps the flags of the
  last TUNSETIFF), as any virtio-net user of the TAP would.

Linux UAPI used: linux/if_tun.h (TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD,
TUNGETIFF, TUNGETFEATURES, TUNSETPERSIST, TUNSETVNETLE) and linux/sockios.h
(SIOCGIFFLAGS/SIOCSIFFLAGS on any socket, SIOCGIFHWADDR, SIOCGIFMTU).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def _iow(nr: int, size: int = 4) -> int:
    """_IOW('T', nr, size): write direction, type 'T' (0x54)."""
    return (1 << 30) | (size << 16) | (0x54 << 8) | nr


def _ior(nr: int, size: int = 4) -> int:
    return (2 << 30) | (size << 16) | (0x54 << 8) | nr


TUNSETIFF = _iow(202)
TUNSETPERSIST = _iow(203)
TUNGETFEATURES = _ior(207)
TUNSETOFFLOAD = _iow(208)
TUNGETIFF = _ior(210)
TUNGETVNETHDRSZ = _ior(215)
TUNSETVNETHDRSZ = _iow(216)
TUNSETVNETLE = _iow(220)

IFF_TUN, IFF_TAP = 0x0001, 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO = 0x01, 0x02, 0x04, 0x08, 0x10

SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1

IFNAMSIZ = 16  # including the NUL
VNET_HDR_SIZE = 12  # struct virtio_net_hdr_v1 (with num_buffers)
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name + the short of the union, padded to 40 bytes


class TapError(Exception):
    """A TAP device could not be opened, created or configured; the message
    names the interface and what to do about it."""


def check_name(name: str) -> bytes:
    """The interface name as the kernel wants it, or TapError saying why not."""
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise TapError(f"TAP name {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
    # The kernel's dev_valid_name(): no '/', ':' or whitespace, not '.'/'..'.
    if name in (".", "..") or any(c in name for c in "/: \t\n") or raw.count(b"%") > 1:
        raise TapError(f"TAP name {name!r} is not a valid interface name")
    return raw


def _ifreq(name: bytes, flags: int = 0) -> bytearray:
    return bytearray(_IFREQ.pack(name, flags))


class Tap:
    """An open TAP interface, non-blocking, with 12-byte virtio-net headers.

    Satisfies the virtio-net device's `NetBackend`: `send`/`recv_into` move
    one frame (header included) per call and raise BlockingIOError when the
    kernel has nothing to give or take.
    """

    def __init__(self, fd: int, name: str, created: bool) -> None:
        self.fd = fd
        self.name = name
        self.created = created  # True: pyvirt made it, and it goes away with the fd

    @classmethod
    def open(cls, name: str = "pyvtap%d", *, up: bool = True) -> Tap:
        """Create the TAP `name` (a `%d` in it lets the kernel pick a number)
        or attach to the existing one, and prepare it for virtio-net."""
        raw = check_name(name)
        existed = "%" not in name and os.path.exists(f"/sys/class/net/{name}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise TapError("no /dev/net/tun: load the tun module (modprobe tun) "
                           "or create the node (mknod /dev/net/tun c 10 200)") from e
        except PermissionError as e:
            raise TapError("permission denied opening /dev/net/tun: run as root or make "
                           "the node accessible to this user") from e
        except OSError as e:
            raise TapError(f"cannot open /dev/net/tun: {e.strerror}") from e
        try:
            features = cls._get_features(fd)
            if not features & IFF_VNET_HDR:
                raise TapError("this kernel's tun driver lacks IFF_VNET_HDR, which pyvirt needs")
            req = _ifreq(raw, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            try:
                fcntl.ioctl(fd, TUNSETIFF, req)
            except OSError as e:
                raise TapError(cls._setiff_message(name, existed, e)) from e
            real = bytes(req[:IFNAMSIZ]).split(b"\0", 1)[0].decode()
            tap = cls(fd, real, created=not existed)
            tap._ioctl_int(TUNSETVNETHDRSZ, VNET_HDR_SIZE, "TUNSETVNETHDRSZ")
            try:
                # virtio 1.x headers are little-endian; on a little-endian host
                # that is already so, elsewhere this makes it so.
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
            except OSError:
                pass
            tap.set_offload(csum=False, tso4=False, tso6=False)
            if up:
                tap.set_up(True)
            return tap
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _get_features(fd: int) -> int:
        buf = bytearray(4)
        try:
            fcntl.ioctl(fd, TUNGETFEATURES, buf)
        except OSError:
            return IFF_TAP | IFF_NO_PI | IFF_VNET_HDR  # very old kernels: assume, TUNSETIFF will tell
        return int(struct.unpack("I", buf)[0])

    @staticmethod
    def _setiff_message(name: str, existed: bool, e: OSError) -> str:
        what = f"attach to TAP {name!r}" if existed else f"create TAP {name!r}"
        if e.errno == errno.EPERM:
            return (f"cannot {what}: permission denied; run as root (CAP_NET_ADMIN) or use a persistent "
                    f"TAP owned by this user (ip tuntap add NAME mode tap vnet_hdr user USER)")
        if e.errno == errno.EBUSY:
            return f"cannot {what}: another process has it open"
        if e.errno == errno.EINVAL and existed:
            return (f"cannot {what}: {name!r} exists but is not a single-queue TAP "
                    f"(a TUN device, another kind of interface, or created with multi_queue)")
        return f"cannot {what}: {e.strerror}"

    def _ioctl_int(self, request: int, value: int, what: str) -> None:
        try:
            fcntl.ioctl(self.fd, request, struct.pack("i", value))
        except OSError as e:
            raise TapError(f"TAP {self.name}: {what} failed: {e.strerror}") from e

    # --- configuration ------------------------------------------------------
    def set_offload(self, *, csum: bool, tso4: bool, tso6: bool, ecn: bool = False) -> None:
        """Tell the kernel which offloads the reader (the guest) accepts: with
        csum it may hand us frames with partial checksums, with tso4/6 frames
        up to 64 KiB that the guest segments or, with GRO, takes whole."""
        flags = TUN_F_CSUM if csum else 0
        if csum:  # TSO without checksum offload is meaningless; the kernel rejects it
            flags |= (TUN_F_TSO4 if tso4 else 0) | (TUN_F_TSO6 if tso6 else 0)
            if flags & (TUN_F_TSO4 | TUN_F_TSO6) and ecn:
                flags |= TUN_F_TSO_ECN
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            raise TapError(f"TAP {self.name}: TUNSETOFFLOAD {flags:#x} failed: {e.strerror}") from e

    def _sock_ioctl(self, request: int, req: bytearray) -> bytearray:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            fcntl.ioctl(s.fileno(), request, req)
        return req

    def interface_flags(self) -> int:
        """The interface's IFF_* flags (IFF_UP, IFF_RUNNING...)."""
        try:
            req = self._sock_ioctl(SIOCGIFFLAGS, _ifreq(self.name.encode()))
        except OSError as e:
            raise TapError(f"TAP {self.name}: SIOCGIFFLAGS failed: {e.strerror}") from e
        return int(_IFREQ.unpack(req)[1])

    def set_up(self, up: bool) -> None:
        """Bring the link up or down (`ip link set NAME up`)."""
        try:
            flags = self.interface_flags()
            flags = flags | IFF_UP if up else flags & ~IFF_UP
            self._sock_ioctl(SIOCSIFFLAGS, _ifreq(self.name.encode(), flags & 0xFFFF))
        except OSError as e:
            raise TapError(f"TAP {self.name}: cannot set the link {'up' if up else 'down'}: {e.strerror}") from e

    def tun_flags(self) -> int:
        """The tun driver's view of this fd: IFF_TAP, IFF_VNET_HDR, IFF_PERSIST..."""
        req = _ifreq(b"")
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, req)
        except OSError as e:
            raise TapError(f"TAP {self.name}: TUNGETIFF failed: {e.strerror}") from e
        return int(_IFREQ.unpack(req)[1])

    def vnet_hdr_size(self) -> int:
        buf = bytearray(4)
        try:
            fcntl.ioctl(self.fd, TUNGETVNETHDRSZ, buf)
        except OSError as e:
            raise TapError(f"TAP {self.name}: TUNGETVNETHDRSZ failed: {e.strerror}") from e
        return int(struct.unpack("i", buf)[0])

    def mtu(self) -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            req = bytearray(struct.pack("16si20x", self.name.encode(), 0))
            fcntl.ioctl(s.fileno(), SIOCGIFMTU, req)
        return int(struct.unpack("16si20x", req)[1])

    def host_mac(self) -> bytes:
        """The host side's MAC address (the guest's must differ)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            req = bytearray(struct.pack("16s24x", self.name.encode()))
            fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
        return bytes(req[18:24])  # after the name: sa_family (2 bytes), then sa_data

    # --- NetBackend -----------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def send(self, bufs: Sequence[memoryview]) -> int:
        """Inject one frame (virtio_net_hdr_v1 + Ethernet frame) into the host."""
        return os.writev(self.fd, bufs)

    def recv_into(self, bufs: Sequence[memoryview]) -> int:
        """Read one frame (header + Ethernet frame); a frame longer than the
        buffers is cut to their size. BlockingIOError when there is none."""
        return os.readv(self.fd, bufs)

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            if self.created:
                # Ours, so it must not outlive us even if someone set it persistent.
                if self.tun_flags() & IFF_PERSIST:
                    fcntl.ioctl(self.fd, TUNSETPERSIST, 0)  # by value, not a pointer
            else:
                # Not ours: the next user should not inherit this guest's offloads.
                self.set_offload(csum=False, tso4=False, tso6=False)
        except (OSError, TapError):
            pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tap(name: str = "pyvtap%d", *, up: bool = True) -> Tap:
    """`Tap.open`: create or attach to the TAP `name`, ready for virtio-net."""
    return Tap.open(name, up=up)
