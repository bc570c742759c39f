"""`pyvirt image create|info|check|convert|resize|rebase|commit|map|snapshot`:
qemu-img's verbs, with its option letters and output forms, for raw and
qcow2 images.

Names and flags follow qemu-img so muscle memory and scripts carry over:
the same `--output json` documents (`info`, `check`, `map`), the same exit
statuses of `check` (0 clean, 2 corruptions, 3 leaks only, 63 a format
without checks). Where qemu-img is unhelpful pyvirt is not: a backing chain
that loops is an error at once (qemu-img recurses until it gives up), `create
-b` without `-F` records the detected format, and an image locked by another
process names that process.

The work is the disk layer's (`pyvirt.disk.qcow2`, `RawBackend`); this module
parses options, walks data ranges and prints. Every error is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

from ..disk import BlockBackend, DiskError, detect_format
from ..disk.qcow2 import Qcow2Error, Qcow2Image, create
from ..disk.raw import F_OFD_SETLK, RawBackend

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator

CHUNK = 4 << 20  # bytes moved per read/write in convert, commit and rebase
MAX_CHAIN = 64  # deeper backing chains are refused (a loop without a repeated file)
_ZERO = memoryview(bytes(CHUNK))


class ImageError(Exception):
    """A user-facing failure of an image command: the message is the whole story."""


class ChainLoopError(ImageError):
    """A backing chain that comes back to one of its images."""


# --------------------------------------------------------------------------- sizes and options

_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpe]?)\s*", re.IGNORECASE)
_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: str, what: str = "size") -> int:
    """qemu-img's sizes: bytes, or with a k/M/G/T/P/E suffix (powers of 1024); '1.5G' works."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ImageError(f"invalid {what} {text!r}: use bytes or a number with a k, M, G, T, P or E suffix")
    number, unit = m.group(1), m.group(2).lower()
    whole, _, frac = number.partition(".")
    scale = 1 << _SHIFT[unit]
    value = int(whole or "0") * scale
    if frac.strip("0"):
        num = int(frac) * scale
        den = 10 ** len(frac)
        if num % den:
            raise ImageError(f"invalid {what} {text!r}: not a whole number of bytes")
        value += num // den
    return value


def human_size(n: int) -> str:
    """A size as qemu prints it: '1 GiB', '324 KiB', '1.5 MiB' (3 significant digits,
    the next unit from 1000 up)."""
    _, exp = math.frexp(n / (1000.0 / 1024.0))
    i = max(0, min((exp - 1) // 10, 6))
    value = n / (1 << (10 * i))
    return f"{value:.3g} {('', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei')[i]}B"


# Options `-o` accepts, per format: name -> help.
QCOW2_OPTIONS = {
    "size": "virtual disk size",
    "compat": "compatibility level: 0.10 (v2) or 1.1 (v3, the default)",
    "backing_file": "file name of a base image",
    "backing_fmt": "image format of the base image",
    "cluster_size": "qcow2 cluster size, a power of two from 512 to 2M (default 64k)",
    "lazy_refcounts": "on/off: postpone refcount updates (needs compat=1.1)",
    "refcount_bits": "width of a reference count entry in bits (default 16)",
    "preallocation": "off, metadata, falloc or full",
    "compression_type": "zlib (the only one pyvirt writes)",
    "extended_l2": "off (extended L2 entries are not supported)",
}
RAW_OPTIONS = {"size": "virtual disk size", "preallocation": "off, falloc or full"}


def parse_options(items: list[str], fmt: str) -> dict[str, str] | None:
    """`-o a=1,b=2 -o c=3` into a dict (',,' is a literal comma, as in qemu);
    None for `-o help` (after printing the options)."""
    known = QCOW2_OPTIONS if fmt == "qcow2" else RAW_OPTIONS
    opts: dict[str, str] = {}
    for item in items:
        for part in re.split(r"(?<!,),(?!,)", item):
            part = part.replace(",,", ",")
            if not part:
                continue
            if part in ("help", "?"):
                width = max(len(k) for k in known) + 8
                print(f"Supported {fmt} options:")
                for key, text in known.items():
                    print(f"  {(key + '=<value>').ljust(width)} - {text}")
                return None
            key, eq, value = part.partition("=")
            if not eq:
                raise ImageError(f"-o {part}: expected NAME=VALUE")
            if key not in known:
                raise ImageError(f"-o {key}: not an option of {fmt} images (known: {', '.join(known)})")
            opts[key] = value
    return opts


def _onoff(key: str, value: str) -> bool:
    if value in ("on", "true", "yes"):
        return True
    if value in ("off", "false", "no"):
        return False
    raise ImageError(f"-o {key}={value}: use on or off")


def qcow2_create_args(opts: dict[str, str]) -> dict[str, object]:
    """Keyword arguments of `qcow2.create` from qemu-img's `-o` names."""
    kw: dict[str, object] = {}
    if "cluster_size" in opts:
        kw["cluster_size"] = parse_size(opts["cluster_size"], "cluster_size")
    if "compat" in opts:
        versions = {"0.10": 2, "v2": 2, "1.1": 3, "v3": 3}
        if opts["compat"] not in versions:
            raise ImageError(f"-o compat={opts['compat']}: use 0.10 (v2) or 1.1 (v3)")
        kw["version"] = versions[opts["compat"]]
    if "lazy_refcounts" in opts:
        kw["lazy_refcounts"] = _onoff("lazy_refcounts", opts["lazy_refcounts"])
    if "refcount_bits" in opts:
        try:
            kw["refcount_bits"] = int(opts["refcount_bits"])
        except ValueError:
            raise ImageError(f"-o refcount_bits={opts['refcount_bits']}: not a number") from None
    if "preallocation" in opts:
        kw["preallocation"] = opts["preallocation"]
    if opts.get("compression_type", "zlib") != "zlib":
        raise ImageError(f"-o compression_type={opts['compression_type']}: only zlib is supported")
    if _onoff("extended_l2", opts.get("extended_l2", "off")):
        raise ImageError("-o extended_l2=on: extended L2 entries are not supported")
    return kw


# --------------------------------------------------------------------------- opening images and chains

@dataclass(frozen=True)
class Layer:
    """One image of a backing chain: its path as qemu names it (a relative
    backing name joined to its overlay's folder) and its format."""

    path: str
    format: str


def resolve_backing(image_path: str, backing: str) -> str:
    """Where a backing file name points: relative names start in the overlay's folder."""
    if os.path.isabs(backing):
        return backing
    return os.path.join(os.path.dirname(image_path), backing)


def _stat(path: str, named_by: str | None = None) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        where = f" (the backing file of {named_by})" if named_by else ""
        raise ImageError(f"{path}{where}: {e.strerror}") from e


def backing_chain(path: str, fmt: str | None = None) -> list[Layer]:
    """The images from `path` down its backing files, each read without its
    own backing file, so that a chain that loops (an image that is its own
    backing file, a -> b -> a) is an error at once instead of an endless
    descent."""
    layers: list[Layer] = []
    seen: dict[tuple[int, int], str] = {}
    named_by: str | None = None
    while True:
        st = _stat(path, named_by)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            names = " -> ".join([*(layer.path for layer in layers), path])
            raise ChainLoopError(f"{layers[0].path}: the backing chain loops ({names}): "
                                 f"fix it with 'pyvirt image rebase -u -b NEWBACKING {layers[-1].path}'")
        seen[key] = path
        fmt = fmt or detect_format(path)
        layers.append(Layer(path, fmt))
        if fmt != "qcow2":
            return layers
        img = Qcow2Image(path, readonly=True, lock=False, backing=False)
        try:
            backing, backing_fmt = img.backing_file, img.backing_format
        finally:
            img.close()
        if not backing:
            return layers
        if len(layers) >= MAX_CHAIN:
            raise ImageError(f"{layers[0].path}: the backing chain is deeper than {MAX_CHAIN} images")
        named_by, path, fmt = path, resolve_backing(path, backing), backing_fmt or None


def open_image(path: str, fmt: str | None = None, *, readonly: bool = True, share: bool = False,
               backing: bool = True) -> BlockBackend:
    """Open an image for a command. With `backing` the chain is walked first
    (see `backing_chain`); `share` takes no lock (qemu-img's -U)."""
    if backing:
        fmt = backing_chain(path, fmt)[0].format
    else:
        _stat(path)
        fmt = fmt or detect_format(path)
    try:
        if fmt == "qcow2":
            return Qcow2Image(path, readonly, lock=not share, backing=backing)
        return RawBackend(path, readonly, lock=not share)
    except DiskError as e:
        raise ImageError(_with_lock_holder(str(e), path)) from e


def _with_lock_holder(message: str, path: str) -> str:
    """`message`, naming the processes that hold a lock on the image it is
    about (its first words, else `path`) when a lock is in the way: OFD
    locks carry no pid, /proc/PID/fdinfo shows who holds them."""
    if "lock" not in message:
        return message
    named = message.split(": ", 1)[0]
    holders = lock_holders(named if os.path.exists(named) else path, exclude=os.getpid())
    if not holders or any(f"process {pid} " in message for pid, _ in holders):
        return message
    who = ", ".join(f"process {pid} ({name})" for pid, name in holders)
    return f"{message}; held by {who}"


def lock_holders(path: str, exclude: int = 0) -> list[tuple[int, str]]:
    """(pid, command name) of the processes this user can see holding a lock on `path`."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    tag = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    found: list[tuple[int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fdinfo"):
                with open(fd.path) as f:
                    text = f.read()
                if "lock:" in text and tag in text:
                    with open(f"/proc/{entry.name}/comm") as f:
                        found.append((int(entry.name), f.read().strip()))
                    break
        except OSError:  # gone, or another user's
            continue
    return found


def _lock_for_write(fd: int, path: str) -> None:
    """Lock a file being created in place as `RawBackend` does (whole file,
    OFD, exclusive), so `create` cannot wipe an image a VM is using."""
    import fcntl
    import struct

    try:
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("@hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise ImageError(_with_lock_holder(f"{path}: cannot write the image: another process holds a lock on it",
                                               path)) from e


def _read_zero_padded(disk: BlockBackend | None, offset: int, view: memoryview) -> None:
    """Fill `view` from `disk` at `offset`, with zeros past its end (or for no disk)."""
    n = 0 if disk is None else max(0, min(len(view), disk.size - offset))
    if n:
        disk.read_into(offset, [view[:n]])  # type: ignore[union-attr]
    if n < len(view):
        view[n:] = _ZERO[:len(view) - n]


def _is_zero(buf: bytearray, start: int, length: int) -> bool:
    return buf.startswith(_ZERO[:length], start)


# --------------------------------------------------------------------------- data ranges

@dataclass(frozen=True)
class Status:
    """A range of the virtual disk as `qemu-img map --output json` shows it."""

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None

    def json(self) -> dict[str, object]:
        d: dict[str, object] = {"start": self.start, "length": self.length, "depth": self.depth,
                                "present": self.present, "zero": self.zero, "data": self.data}
        if self.offset is not None:
            d["offset"] = self.offset
        return d


def raw_extents(disk: RawBackend, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(start, length, data) of a raw file from SEEK_DATA/SEEK_HOLE; all data
    where the file system (or a block device) cannot tell."""
    pos = start
    while pos < end:
        try:
            data = min(os.lseek(disk.fd, pos, os.SEEK_DATA), end)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole from here on
                data = end
            else:
                yield pos, end - pos, True
                return
        if data > pos:
            yield pos, data - pos, False
        if data >= end:
            return
        try:
            hole = min(os.lseek(disk.fd, data, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        yield data, hole - data, True
        pos = hole


def _layers(disk: BlockBackend) -> list[BlockBackend]:
    chain = [disk]
    while isinstance(chain[-1], Qcow2Image) and chain[-1].backing is not None:
        chain.append(chain[-1].backing)  # type: ignore[arg-type]
    return chain


def block_status(disk: BlockBackend) -> list[Status]:
    """The whole disk as merged `Status` ranges, like `qemu-img map --output json`."""
    out: list[Status] = []
    if isinstance(disk, Qcow2Image):
        for e in disk.map_entries():
            offset = e.get("offset")
            _merge(out, Status(int(e["start"]), int(e["length"]), int(e["depth"]),  # type: ignore[call-overload]
                               bool(e["present"]), bool(e["zero"]), bool(e["data"]),
                               None if offset is None else int(offset)))  # type: ignore[call-overload]
    elif isinstance(disk, RawBackend):
        for start, length, data in raw_extents(disk, 0, disk.size):
            _merge(out, Status(start, length, 0, True, not data, data, start))
    else:
        out.append(Status(0, disk.size, 0, True, False, True, None))
    return out


def _merge(out: list[Status], s: Status) -> None:
    """Append `s`, or extend the last range when `s` continues it (offsets included)."""
    if s.length <= 0:
        return
    if out:
        last = out[-1]
        same = (last.depth, last.present, last.zero, last.data) == (s.depth, s.present, s.zero, s.data)
        if same and last.start + last.length == s.start and (
                (last.offset is None and s.offset is None)
                or (last.offset is not None and s.offset is not None and last.offset + last.length == s.offset)):
            out[-1] = Status(last.start, last.length + s.length, last.depth, last.present, last.zero, last.data,
                             last.offset)
            return
    out.append(s)


def _windows(status: list[Status], size: int, window: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """(start, length, data ranges inside) for each `window`-aligned piece of the disk."""
    data = [(s.start, s.start + s.length) for s in status if s.data and not s.zero]
    i = 0
    for start in range(0, size, window):
        end = min(start + window, size)
        ranges: list[tuple[int, int]] = []
        while i < len(data) and data[i][1] <= start:
            i += 1
        j = i
        while j < len(data) and data[j][0] < end:
            ranges.append((max(data[j][0], start), min(data[j][1], end)))
            j += 1
        yield start, end - start, ranges


# --------------------------------------------------------------------------- progress

class Progress:
    """A progress bar on stderr: rich's when it is installed and stderr is a
    terminal, else qemu-img's '(12.34/100%)', a line per percent."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self._shown = -1
        self._rich: object = None
        self._task: object = None
        if not enabled:
            return
        self._tty = sys.stderr.isatty()
        if self._tty:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress as RichProgress, TaskProgressColumn, TextColumn
                from rich.progress import TimeRemainingColumn, TransferSpeedColumn
            except ImportError:
                pass
            else:
                bar = RichProgress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                   TransferSpeedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr))
                bar.start()
                self._task = bar.add_task(label, total=self.total)
                self._rich = bar
        self.advance(0)

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)  # type: ignore[attr-defined]
            return
        pct = self.done * 100 // self.total
        if pct != self._shown:
            self._shown = pct
            end = "\r" if self._tty else "\n"
            sys.stderr.write(f"    ({self.done * 100 / self.total:.2f}/100%){end}")
            sys.stderr.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()  # type: ignore[attr-defined]
            self._rich = None
        elif self.enabled and self._tty:
            sys.stderr.write("\n")
        self.enabled = False


def _progress(args: argparse.Namespace, total: int, label: str) -> Progress:
    quiet = getattr(args, "quiet", False)
    return Progress(total, label, bool(args.progress or (not quiet and sys.stderr.isatty())))


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text)


# --------------------------------------------------------------------------- create

def cmd_create(args: argparse.Namespace) -> int:
    fmt = args.format or "raw"
    opts = parse_options(args.options, fmt)
    if opts is None:
        return 0
    if not args.filename:
        raise ImageError("give the new image's file name (pyvirt image create [-f FMT] IMG SIZE)")
    backing = args.backing if args.backing is not None else opts.pop("backing_file", None)
    backing_fmt = args.backing_format or opts.pop("backing_fmt", None)
    if args.size is not None and "size" in opts:
        raise ImageError("the size is given twice (SIZE and -o size=)")
    text = args.size if args.size is not None else opts.pop("size", None)
    size = parse_size(text) if text is not None else None
    if backing_fmt and not backing:
        raise ImageError("-F needs a backing file (-b)")
    if backing and fmt != "qcow2":
        raise ImageError(f"{fmt} images have no backing file: use -f qcow2")
    if backing and not args.unsafe:
        chain = backing_chain(resolve_backing(args.filename, backing), backing_fmt)
        if os.path.exists(args.filename) and any(os.path.samefile(layer.path, args.filename) for layer in chain):
            raise ImageError(f"{args.filename}: cannot be its own backing file")
        backing_fmt = chain[0].format
        if size is None:
            with open_image(chain[0].path, chain[0].format, share=True, backing=False) as base:
                size = base.size
    if size is None:
        raise ImageError("give the image's SIZE" + (" (-u does not open the backing file)" if backing else ""))
    if fmt == "qcow2":
        size = -(-size // 512) * 512  # as qemu-img: qcow2 sizes are whole sectors
        kw = qcow2_create_args(opts)
        shown = " ".join(f"{k}={v}" for k, v in opts.items())
        _say(args, f"Formatting '{args.filename}', fmt=qcow2 size={size}"
                   + (f" backing_file={backing}" if backing else "")
                   + (f" backing_fmt={backing_fmt}" if backing_fmt else "") + (f" {shown}" if shown else ""))
        create(args.filename, size, backing_file=backing or None, backing_format=backing_fmt, **kw)  # type: ignore[arg-type]
    else:
        _say(args, f"Formatting '{args.filename}', fmt=raw size={size}")
        create_raw(args.filename, size, opts.get("preallocation", "off"))
    return 0


def create_raw(path: str, size: int, preallocation: str = "off") -> None:
    if preallocation not in ("off", "falloc", "full"):
        raise ImageError(f"-o preallocation={preallocation}: use off, falloc or full")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ImageError(f"{path}: cannot create the image: {e.strerror}") from e
    try:
        _lock_for_write(fd, path)
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        if preallocation == "falloc" and size:
            os.posix_fallocate(fd, 0, size)
        elif preallocation == "full":
            for start in range(0, size, CHUNK):
                os.pwrite(fd, _ZERO[:min(CHUNK, size - start)], start)
            os.fdatasync(fd)
    except OSError as e:
        raise ImageError(f"{path}: cannot create the image: {e.strerror}") from e
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- info

def image_info(layer: Layer, share: bool) -> dict[str, object]:
    """`qemu-img info --output json` of one image (not its backing files)."""
    with open_image(layer.path, layer.format, share=share, backing=False) as disk:
        if isinstance(disk, Qcow2Image):
            info = dict(disk.info())
        else:
            info = {"virtual-size": disk.size, "filename": layer.path, "format": "raw", "dirty-flag": False}
    info["filename"] = layer.path
    if "actual-size" not in info:
        info["actual-size"] = os.stat(layer.path).st_blocks * 512
    if info.get("backing-filename"):
        info["full-backing-filename"] = resolve_backing(layer.path, str(info["backing-filename"]))
    return info


def format_info(info: dict[str, object]) -> list[str]:
    """The human form of `qemu-img info`."""
    size = int(info["virtual-size"])  # type: ignore[call-overload]
    lines = [f"image: {info['filename']}", f"file format: {info['format']}",
             f"virtual size: {human_size(size)} ({size} bytes)"]
    actual = info.get("actual-size")
    lines.append(f"disk size: {human_size(int(actual))}" if isinstance(actual, int) else "disk size: unavailable")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("backing-filename"):
        name, full = info["backing-filename"], info.get("full-backing-filename", info["backing-filename"])
        lines.append(f"backing file: {name}" + (f" (actual path: {full})" if full != name else ""))
        if info.get("backing-filename-format"):
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    snapshots = info.get("snapshots")
    if isinstance(snapshots, list) and snapshots:
        lines += ["Snapshot list:", *format_snapshots(snapshots)]
    specific = info.get("format-specific")
    if isinstance(specific, dict) and isinstance(specific.get("data"), dict):
        lines.append("Format specific information:")
        for key, value in specific["data"].items():
            shown = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"    {key.replace('-', ' ')}: {shown}")
    return lines


def format_snapshots(snapshots: list[dict[str, object]]) -> list[str]:
    """qemu's snapshot table."""
    row = "{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}"
    lines = [row.format("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")]
    for s in snapshots:
        clock = int(s.get("vm-clock-sec", 0)) * 10**9 + int(s.get("vm-clock-nsec", 0))  # type: ignore[call-overload]
        secs, ms = divmod(clock // 10**6, 1000)
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(s.get("date-sec", 0))))  # type: ignore[call-overload]
        icount = s.get("icount")
        lines.append(row.format(str(s.get("id", "")), str(s.get("name", "")),
                                human_size(int(s.get("vm-state-size", 0))), date,  # type: ignore[call-overload]
                                f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ms:03d}",
                                "" if icount is None or icount == -1 else str(icount)))
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    chain = backing_chain(args.filename, args.format)
    if not args.backing_chain:
        chain = chain[:1]
    infos = [image_info(layer, args.force_share) for layer in chain]
    if args.output == "json":
        print(json.dumps(infos if args.backing_chain else infos[0], indent=4))
    else:
        print("\n\n".join("\n".join(format_info(info)) for info in infos))
    return 0


# --------------------------------------------------------------------------- check

def check_json(result: object, path: str) -> dict[str, object]:
    d: dict[str, object] = {"filename": path, "format": "qcow2", "check-errors": getattr(result, "check_errors")}
    for key in ("image_end_offset", "corruptions", "leaks", "corruptions_fixed", "leaks_fixed", "total_clusters",
                "allocated_clusters", "fragmented_clusters", "compressed_clusters"):
        value = getattr(result, key, 0)
        if value:
            d[key.replace("_", "-")] = value
    return d


def check_report(result: object) -> list[str]:
    """The human summary of `qemu-img check` (the per-cluster messages go to stderr)."""
    r = result
    lines: list[str] = []
    if r.check_errors:  # type: ignore[attr-defined]
        lines.append(f"\n{r.check_errors} internal errors have occurred during the check.")  # type: ignore[attr-defined]
    if r.corruptions:  # type: ignore[attr-defined]
        lines.append(f"\n{r.corruptions} errors were found on the image.\n"  # type: ignore[attr-defined]
                     "Data may be corrupted, or further writes to the image may corrupt it.")
    if r.leaks:  # type: ignore[attr-defined]
        lines.append(f"\n{r.leaks} leaked clusters were found on the image.\n"  # type: ignore[attr-defined]
                     "This means waste of disk space, but no harm to data.")
    if not (r.check_errors or r.corruptions or r.leaks):  # type: ignore[attr-defined]
        lines.append("No errors were found on the image.")
    total, alloc = r.total_clusters, r.allocated_clusters  # type: ignore[attr-defined]
    if total and alloc:
        lines.append(f"{alloc}/{total} = {alloc * 100 / total:.2f}% allocated, "
                     f"{r.fragmented_clusters * 100 / alloc:.2f}% fragmented, "  # type: ignore[attr-defined]
                     f"{r.compressed_clusters * 100 / alloc:.2f}% compressed clusters")  # type: ignore[attr-defined]
    if r.image_end_offset:  # type: ignore[attr-defined]
        lines.append(f"Image end offset: {r.image_end_offset}")  # type: ignore[attr-defined]
    return lines


def check_status(result: object) -> int:
    """qemu-img check's exit status: 1 check errors, 2 corruptions, 3 leaks, 0 clean."""
    if getattr(result, "check_errors"):
        return 1
    if getattr(result, "corruptions"):
        return 2
    return 3 if getattr(result, "leaks") else 0


def cmd_check(args: argparse.Namespace) -> int:
    _stat(args.filename)
    fmt = args.format or detect_format(args.filename)
    if fmt != "qcow2":
        print(f"pyvirt: {args.filename}: this image format ({fmt}) does not support checks", file=sys.stderr)
        return 63
    if args.repair and args.force_share:
        raise ImageError("-r writes the image: it cannot be used with -U")
    with open_image(args.filename, fmt, readonly=not args.repair, share=args.force_share, backing=False) as img:
        assert isinstance(img, Qcow2Image)
        if args.repair == "all":
            result = img.check(repair=True)
        else:
            result = img.check(repair=False)
            # -r leaks: with references wrong too, rebuilding refcounts is -r all's call.
            if args.repair == "leaks" and result.leaks and not result.corruptions:
                result = img.check(repair=True)
    fixed = result.leaks_fixed or result.corruptions_fixed
    if args.output == "json":
        print(json.dumps(check_json(result, args.filename), indent=4))
    elif not args.quiet:
        for msg in result.messages:
            print(msg, file=sys.stderr)
        if fixed:
            print(f"The following inconsistencies were found and repaired:\n\n"
                  f"    {result.leaks_fixed} leaked clusters\n    {result.corruptions_fixed} corruptions\n\n"
                  "Double checking the fixed image now...")
        print("\n".join(check_report(result)))
    if args.repair == "leaks" and result.corruptions and not args.quiet:
        print(f"pyvirt: {args.filename}: leaks were not repaired because of the corruptions: use -r all",
              file=sys.stderr)
    return check_status(result)


# --------------------------------------------------------------------------- convert

def cmd_convert(args: argparse.Namespace) -> int:
    out_fmt = args.output_format
    opts = parse_options(args.options, out_fmt)
    if opts is None:
        return 0
    if args.compress and out_fmt != "qcow2":
        raise ImageError("-c (compression) needs -O qcow2")
    if "backing_file" in opts or "backing_fmt" in opts:
        raise ImageError("convert writes a standalone image: -o backing_file is not supported")
    sparse = parse_size(args.sparse_size, "-S size")
    if os.path.exists(args.target) and os.path.samefile(args.source, args.target):
        raise ImageError(f"{args.target}: the source and the target are the same file")
    with open_image(args.source, args.format, share=args.force_share) as src:
        if args.no_create:
            if opts:
                raise ImageError("-n writes into an existing image: -o does not apply")
            dst = open_image(args.target, None, readonly=False, backing=False)
            if dst.size < src.size:
                dst.close()
                raise ImageError(f"{args.target}: smaller ({dst.size} bytes) than {args.source} ({src.size} bytes)")
        else:
            if out_fmt == "qcow2":
                size = -(-src.size // 512) * 512
                create(args.target, size, **qcow2_create_args(opts))  # type: ignore[arg-type]
            else:
                create_raw(args.target, src.size, opts.get("preallocation", "off"))
            dst = open_image(args.target, out_fmt, readonly=False, backing=False)
        with dst:
            progress = _progress(args, src.size, "convert")
            try:
                copy_image(src, dst, sparse=sparse, compress=args.compress, fresh=not args.no_create,
                           advance=progress.advance)
                if args.cache != "unsafe":
                    dst.flush()
            finally:
                progress.close()
    return 0


def copy_image(src: BlockBackend, dst: BlockBackend, *, sparse: int = 4096, compress: bool = False,
               fresh: bool = True, advance: Callable[[int], None] = lambda n: None) -> None:
    """Copy what `src` holds into `dst`, leaving out unallocated and zero
    ranges (`fresh`: `dst` already reads as zeros there) and zero blocks of
    `sparse` bytes (0: write every byte). `compress` writes whole qcow2
    clusters compressed."""
    cluster = dst.cluster_size if isinstance(dst, Qcow2Image) else 0
    window = max(CHUNK, cluster)
    # A zero block is left out whole; into qcow2 a cluster is the unit a write allocates.
    grain = max(sparse, cluster) if sparse else 0
    if compress:
        grain = cluster
    grain = min(grain, window)
    reader = ReadAhead(src, _windows(block_status(src), src.size, window), window)
    try:
        for start, length, buf in reader:
            if buf is None:  # nothing there: zeros
                if not fresh or not sparse:
                    dst.write_zeroes(start, length, may_unmap=bool(sparse))
            elif compress:
                assert isinstance(dst, Qcow2Image)
                view = memoryview(buf)
                for off in range(0, length, cluster):
                    n = min(cluster, length - off)
                    if not _is_zero(buf, off, n):
                        dst.write_compressed_cluster((start + off) // cluster, bytes(view[off:off + n]))
            elif not grain or _first_zero_block(buf, length, grain) < 0:
                dst.write_from(start, [memoryview(buf)[:length]])
            else:
                view = memoryview(buf)
                for a, b in _nonzero_runs(buf, length, grain):
                    dst.write_from(start + a, [view[a:b]])
                if not fresh:
                    for a, b in _zero_runs(buf, length, grain):
                        dst.write_zeroes(start + a, b - a, may_unmap=True)
            reader.release(buf)
            advance(length)
    finally:
        reader.close()


class ReadAhead:
    """Reads the data ranges of the next windows in a thread while the
    caller writes the previous ones: preadv and pwritev run without the
    GIL, so on two cores reading and writing overlap (qemu-img convert's
    thread pool does the same). Yields (start, length, buffer holding the
    window, gaps zeroed) or (start, length, None) for a window without data;
    `release` hands a buffer back for reuse."""

    DEPTH = 3  # buffers: one being written, the others being filled

    def __init__(self, src: BlockBackend, windows: Iterator[tuple[int, int, list[tuple[int, int]]]],
                 window: int) -> None:
        import queue
        import threading

        self._src = src
        self._windows = windows
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(self.DEPTH):
            self._free.put(bytearray(window))
        self._ready: queue.Queue[tuple[int, int, bytearray | None] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._empty = queue.Empty
        self._thread = threading.Thread(target=self._run, name="image-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for start, length, ranges in self._windows:
                if not ranges:
                    self._ready.put((start, length, None))
                    continue
                buf = self._take()
                if buf is None:
                    return
                view = memoryview(buf)
                pos = 0
                for a, b in ranges:  # read the data ranges, zero the gaps
                    if a - start > pos:
                        view[pos:a - start] = _ZERO[:a - start - pos]
                    self._src.read_into(a, [view[a - start:b - start]])
                    pos = b - start
                if pos < length:
                    view[pos:length] = _ZERO[:length - pos]
                self._ready.put((start, length, buf))
            self._ready.put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            self._ready.put(e)

    def _take(self) -> bytearray | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except self._empty:
                pass
        return None

    def __iter__(self) -> Iterator[tuple[int, int, bytearray | None]]:
        while True:
            item = self._ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, buf: bytearray | None) -> None:
        if buf is not None:
            self._free.put(buf)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _first_zero_block(buf: bytearray, length: int, grain: int) -> int:
    """Offset of the first all-zero aligned `grain` block, or -1. A search
    for a zero run (in C) rules out data without one at once."""
    found = buf.find(_ZERO[:grain], 0, length)
    # Without a zero run only a short last block can still be all zeros.
    start = length - length % grain if found < 0 else found - found % grain
    for off in range(start, length, grain):
        if _is_zero(buf, off, min(grain, length - off)):
            return off
    return -1


def _nonzero_runs(buf: bytearray, length: int, grain: int) -> Iterator[tuple[int, int]]:
    first = _first_zero_block(buf, length, grain)
    if first < 0:
        yield 0, length
        return
    run = 0 if first else -1
    for off in range(first, length, grain):
        zero = _is_zero(buf, off, min(grain, length - off))
        if zero and run >= 0:
            yield run, off
            run = -1
        elif not zero and run < 0:
            run = off
    if run >= 0:
        yield run, length


def _zero_runs(buf: bytearray, length: int, grain: int) -> Iterator[tuple[int, int]]:
    pos = 0
    for a, b in _nonzero_runs(buf, length, grain):
        if a > pos:
            yield pos, a
        pos = b
    if pos < length:
        yield pos, length


# --------------------------------------------------------------------------- resize

def cmd_resize(args: argparse.Namespace) -> int:
    text = args.size
    relative = text[:1] in ("+", "-")
    delta = parse_size(text[1:] if relative else text)
    with open_image(args.filename, args.format, readonly=False, backing=False) as disk:
        new = disk.size + (-delta if text[0] == "-" else delta) if relative else delta
        if new < 0:
            raise ImageError(f"{args.filename}: cannot shrink by more than the image's size ({disk.size} bytes)")
        if new < disk.size and not args.shrink:
            raise ImageError("use the --shrink option to shrink an image (the data past the new end is lost)")
        if isinstance(disk, Qcow2Image):
            new = -(-new // 512) * 512
            if new < disk.size:
                disk.discard(new, disk.size - new)  # as qemu-img: --shrink drops the data past the end
            disk.resize(new)
        else:
            assert isinstance(disk, RawBackend)
            try:
                os.ftruncate(disk.fd, new)
            except OSError as e:
                raise ImageError(f"{args.filename}: cannot resize: {e.strerror}") from e
    _say(args, "Image resized.")
    return 0


# --------------------------------------------------------------------------- rebase

def cmd_rebase(args: argparse.Namespace) -> int:
    new_name: str = args.backing
    if args.backing_format and not new_name:
        raise ImageError("-F needs a backing file (-b)")
    _stat(args.filename)
    fmt = args.format or detect_format(args.filename)
    if fmt != "qcow2":
        raise ImageError(f"{args.filename}: {fmt} images have no backing file")
    new_fmt = args.backing_format
    new_path = resolve_backing(args.filename, new_name) if new_name else ""
    if new_path and os.path.exists(new_path):
        try:
            chain = backing_chain(new_path, new_fmt)
        except ChainLoopError:
            raise
        except ImageError:
            if not args.unsafe:
                raise
            chain = [Layer(new_path, new_fmt or detect_format(new_path))]  # -u: a broken chain is the user's call
        if any(os.path.samefile(layer.path, args.filename) for layer in chain):
            raise ImageError(f"{args.filename}: {new_name} would make the backing chain loop")
        new_fmt = chain[0].format
    elif new_path and not args.unsafe:
        _stat(new_path, args.filename)
    with open_image(args.filename, fmt, readonly=False, backing=not args.unsafe) as img:
        assert isinstance(img, Qcow2Image)
        if not args.unsafe:
            new = open_image(new_path, new_fmt) if new_path else None
            try:
                progress = _progress(args, img.size, "rebase")
                try:
                    copy_differences(img, img.backing, new, progress.advance)
                finally:
                    progress.close()
            finally:
                if new is not None:
                    new.close()
        img.set_backing(new_name or None, new_fmt if new_name else None)
        img.flush()
    return 0


def copy_differences(img: Qcow2Image, old: BlockBackend | None, new: BlockBackend | None,
                     advance: Callable[[int], None] = lambda n: None) -> None:
    """Where `img` shows its backing file, write into `img` every cluster on
    which the `old` and `new` backing files differ, so that swapping `old` for
    `new` changes nothing the guest sees."""
    cluster = img.cluster_size
    window = max(CHUNK, cluster)
    a, b = bytearray(window), bytearray(window)
    va, vb = memoryview(a), memoryview(b)
    for ext in img.allocation(0, img.size):
        if ext.kind != "unallocated":
            advance(ext.length)
            continue
        pos, end = ext.start, ext.start + ext.length
        while pos < end:
            n = min(window - pos % window, end - pos)
            _read_zero_padded(old, pos, va[:n])
            _read_zero_padded(new, pos, vb[:n])
            if not a.startswith(vb[:n]):
                run = -1  # coalesce consecutive differing clusters into one write
                for off in [*range(0, n, cluster), n]:
                    differs = off < n and not a.startswith(vb[off:min(off + cluster, n)], off)
                    if differs and run < 0:
                        run = off
                    elif not differs and run >= 0:
                        if _is_zero(a, run, off - run):
                            img.write_zeroes(pos + run, off - run, may_unmap=False)
                        else:
                            img.write_from(pos + run, [va[run:off]])
                        run = -1
            pos += n
            advance(n)


# --------------------------------------------------------------------------- commit

def cmd_commit(args: argparse.Namespace) -> int:
    chain = backing_chain(args.filename, args.format)
    if chain[0].format != "qcow2" or len(chain) < 2:
        raise ImageError(f"{args.filename}: the image has no backing file to commit into")
    top_layer, base_layer = chain[0], chain[1]
    with open_image(top_layer.path, top_layer.format, readonly=False, backing=False) as top, \
            open_image(base_layer.path, base_layer.format, readonly=False) as base:
        assert isinstance(top, Qcow2Image)
        if base.size < top.size:
            base = _grow(base, base_layer, top.size)
        progress = _progress(args, top.size, "commit")
        try:
            commit_into(top, base, progress.advance)
            base.flush()
            if not args.keep:
                make_empty(top)
                top.flush()
        finally:
            progress.close()
            base.close()
    _say(args, "Image committed.")
    return 0


def _grow(base: BlockBackend, layer: Layer, size: int) -> BlockBackend:
    """`base` grown to `size` (qemu's commit does this for a smaller backing file), reopened."""
    if isinstance(base, Qcow2Image):
        base.resize(size)
        return base
    assert isinstance(base, RawBackend)
    os.ftruncate(base.fd, size)
    base.close()
    return open_image(layer.path, layer.format, readonly=False)


def commit_into(top: Qcow2Image, base: BlockBackend, advance: Callable[[int], None] = lambda n: None) -> None:
    """Write what `top` holds itself (data and zero clusters) into `base`."""
    buf = memoryview(bytearray(CHUNK))
    for ext in top.allocation(0, top.size):
        if ext.kind == "zero":
            base.write_zeroes(ext.start, ext.length, may_unmap=True)
        elif ext.kind in ("data", "compressed"):
            for pos in range(ext.start, ext.start + ext.length, CHUNK):
                n = min(CHUNK, ext.start + ext.length - pos)
                top.read_into(pos, [buf[:n]])
                base.write_from(pos, [buf[:n]])
                advance(n)
            continue
        advance(ext.length)


def make_empty(img: Qcow2Image) -> None:
    """Drop every cluster of `img`, so that it shows its backing file again.

    A discard in an image with a backing file leaves zero clusters (so the
    guest keeps reading zeros, as QEMU does); only while the image has no
    backing file open does it unallocate. So the backing file is detached
    in memory (the header keeps naming it) around the discard."""
    backing, img.backing = img.backing, None
    try:
        img.discard(0, img.size)
    finally:
        img.backing = backing
    left = [e for e in img.allocation(0, img.size) if e.kind != "unallocated"]
    if left:
        raise ImageError(f"{img.path}: the data is committed but the image could not be emptied "
                         f"({len(left)} ranges left, from {left[0].start:#x})")


# --------------------------------------------------------------------------- map

def cmd_map(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.format, share=args.force_share) as disk:
        status = block_status(disk)
        files = [getattr(layer, "path", args.filename) for layer in _layers(disk)]
    if args.output == "json":
        entries = [json.dumps(s.json(), separators=(", ", ": ")).replace("{", "{ ", 1) for s in status]
        print("[" + ",\n".join(entries) + "]")
        return 0
    print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
    shown: list[Status] = []
    for s in status:
        if s.data and s.offset is not None:
            _merge(shown, s)
    for s in shown:
        print(f"{_hex(s.start):<15} {_hex(s.length):<15} {_hex(s.offset or 0):<15} {files[s.depth]}")
    return 0


def _hex(n: int) -> str:
    return f"{n:#x}" if n else "0"


# --------------------------------------------------------------------------- snapshot

def cmd_snapshot(args: argparse.Namespace) -> int:
    readonly = bool(args.list)
    if args.force_share and not readonly:
        raise ImageError("-U is only for -l (the other actions write the image)")
    with open_image(args.filename, args.format, readonly=readonly, share=args.force_share, backing=False) as img:
        if not isinstance(img, Qcow2Image):
            raise ImageError(f"{args.filename}: raw images have no snapshots")
        if args.list:
            snapshots: list[dict[str, object]] = img.info().get("snapshots", [])  # type: ignore[assignment]
            if args.output == "json":
                print(json.dumps(snapshots, indent=4))
            elif snapshots:
                print("\n".join(["Snapshot list:", *format_snapshots(snapshots)]))
        elif args.create is not None:
            img.create_snapshot(args.create)
        elif args.apply is not None:
            img.apply_snapshot(args.apply)
        else:
            img.delete_snapshot(args.delete)
    return 0


# --------------------------------------------------------------------------- dispatch

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "create": cmd_create, "info": cmd_info, "check": cmd_check, "convert": cmd_convert, "resize": cmd_resize,
    "rebase": cmd_rebase, "commit": cmd_commit, "map": cmd_map, "snapshot": cmd_snapshot,
}


def cmd_image(args: argparse.Namespace) -> int:
    """Run `pyvirt image VERB`; errors are one line on stderr and status 1."""
    try:
        return COMMANDS[args.image_command](args)
    except (ImageError, DiskError, Qcow2Error) as e:
        message = str(e)
    except OSError as e:
        message = f"{e.filename}: {e.strerror}" if e.filename else (e.strerror or str(e))
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"pyvirt: {message}", file=sys.stderr)
    return 1
