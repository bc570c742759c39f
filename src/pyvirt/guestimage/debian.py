"""Build a bootable Linux guest (vmlinuz + busybox initramfs) from Debian packages.

    build_linux_guest(Path("/tmp/guest"), modules=["virtio_blk"])

1. `AptCache` fetches .deb files with `apt-get download` into a cache
   directory (default ~/.cache/pyvirt/debs, or $PYVIRT_CACHE) and reuses
   them afterwards, so a second build needs no network. apt's package lists
   are refreshed (`apt-get update`) only when a download fails because apt
   does not know the package or version: on a fresh container the lists are
   empty, but updating them on every build would be slow and needs network.
2. The kernel metapackage (linux-image-cloud-amd64) is followed through its
   Depends to the package with the actual kernel
   (linux-image-6.1.0-NN-cloud-amd64), reading the control file ourselves.
3. boot/vmlinuz-<release> is copied out; busybox-static gives /bin/busybox;
   requested modules come with their dependencies (kmod.py).
4. initrd.py lays out the initramfs; it is written gzip-compressed.

Nothing is installed on the host and dpkg is not needed; apt-get is, only
for downloading.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote

from .cpio import gzip_writer
from .deb import DebPackage, version_key
from .errors import AptError, GuestImageError
from .initrd import DEFAULT_INIT, FALLBACK_APPLETS, InitramfsContents, parse_applet_list, write_initramfs
from .kmod import ModuleIndex, modules_alias, modules_dep

DEFAULT_KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
DEFAULT_CMDLINE = "console=ttyS0 panic=-1"  # panic=-1: a failed guest ends the VM instead of hanging
DEFAULT_MEMORY = "256M"
# Index files copied next to the modules when they exist in the package, so
# busybox modprobe knows which modules are built in.
MODULE_INDEX_FILES = ("modules.builtin", "modules.order", "modules.builtin.modinfo")

# apt's messages when its package lists are missing or stale; seen on apt 2.6.
_NEEDS_UPDATE = ("Unable to locate package", "has no installation candidate", "Can't select candidate version",
                 "Can't select versions", "No packages found", "404  Not Found", "404 Not Found")
_CONCRETE_KERNEL = re.compile(r"^linux-image-\d")

Log = Callable[[str], None]
# (argv, cwd) -> (exit status, stdout, stderr); tests replace the real one.
Runner = Callable[[Sequence[str], Path], tuple[int, str, str]]


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(argv: Sequence[str], cwd: Path) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise AptError(f"{argv[0]} not found: building a guest downloads Debian packages with apt-get, so it "
                       "needs a Debian or Ubuntu host (or put the .deb files into the cache directory "
                       "yourself, see docs/linux-guests.md)") from e
    return proc.returncode, proc.stdout, proc.stderr


def default_cache_dir() -> Path:
    env = os.environ.get("PYVIRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pyvirt" / "debs"


def deb_file_version(path: Path) -> str:
    """The version in a name like "busybox-static_1%3a1.35.0-4_amd64.deb" (apt escapes ':')."""
    parts = path.name.removesuffix(".deb").split("_")
    return unquote(parts[1]) if len(parts) >= 3 else "0"


class AptCache:
    """Debian packages by name in one directory, downloaded by apt-get when missing."""

    def __init__(self, directory: Path | None = None, *, refresh: bool = False,
                 runner: Runner = _run, log: Log = _stderr_log) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.refresh = refresh  # download even if cached (still caches the result)
        self._run = runner
        self._log = log
        self._updated = False
        self._fetched: set[str] = set()

    def cached(self, package: str) -> Path | None:
        """The highest cached version of `package`, if any."""
        files = [p for p in self.directory.glob(f"{package}_*.deb") if p.is_file()]
        if not files:
            return None
        return max(files, key=lambda p: version_key(deb_file_version(p)))

    def get(self, package: str) -> Path:
        """A .deb of `package`: from the cache, else downloaded into it."""
        if not (self.refresh and package not in self._fetched):
            hit = self.cached(package)
            if hit is not None:
                self._log(f"using cached {hit}")
                return hit
        path = self._download(package)
        self._fetched.add(package)
        return path

    def _download(self, package: str) -> Path:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AptError(f"cannot create the package cache {self.directory}: {e.strerror}; "
                           "set PYVIRT_CACHE or --cache to a writable directory") from e
        self._log(f"downloading {package} with apt-get into {self.directory}")
        # A private directory per download: apt-get writes into the current
        # directory, and a half-written file must never look like a cached one.
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=self.directory))
        try:
            status, _, err = self._run(["apt-get", "download", package], tmp)
            if status != 0 and not self._updated and any(s in err for s in _NEEDS_UPDATE):
                self._log("apt does not know the package (lists missing or stale); running apt-get update")
                self._update()
                status, _, err = self._run(["apt-get", "download", package], tmp)
            if status != 0:
                detail = "\n".join(line for line in err.splitlines() if not line.startswith("W:"))[-800:]
                hint = ("check the package name (apt-cache policy NAME)" if self._updated
                        else "check the package name and the network")
                after = " even after apt-get update" if self._updated else ""
                raise AptError(f"apt-get download {package} failed{after} (exit {status}):\n{detail}\n{hint}")
            debs = sorted(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise AptError(f"apt-get download {package} left {len(debs)} .deb files in {tmp}, expected one")
            final = self.directory / debs[0].name
            os.replace(debs[0], final)
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _update(self) -> None:
        self._updated = True
        status, _, err = self._run(["apt-get", "update"], self.directory)
        if status != 0:
            raise AptError(f"apt-get update failed (exit {status}): {err.strip()[-800:]}\n"
                           "apt-get update needs root and network access to the Debian mirrors")


def resolve_kernel_package(cache: AptCache, package: str, log: Log = _stderr_log) -> Path:
    """The .deb holding the kernel itself, following metapackages' Depends.

    "linux-image-cloud-amd64" depends on "linux-image-6.1.0-NN-cloud-amd64";
    a name starting "linux-image-<digit>" is taken as the real package.
    """
    name = package
    for _ in range(4):
        path = cache.get(name)
        if _CONCRETE_KERNEL.match(name):
            return path
        deps = DebPackage.from_file(path).depends
        nxt = next((alt for group in deps for alt in group[:1] if alt.startswith("linux-image-")), None)
        if nxt is None:
            return path  # not a metapackage after all; extraction checks for a kernel
        log(f"{name} is a metapackage for {nxt}")
        name = nxt
    raise GuestImageError(f"{package}: more than 3 levels of linux-image metapackages; "
                          "pass the concrete package with --kernel-package")


def busybox_applets(busybox: bytes, log: Log = _stderr_log) -> list[str]:
    """Applets the binary provides, from `busybox --list`, or a fixed list.

    Debian's busybox-static is a static x86-64 executable, so on an x86-64
    host it can simply be asked; elsewhere the common applets are linked.
    """
    with tempfile.TemporaryDirectory(prefix="pyvirt-busybox-") as d:
        exe = Path(d, "busybox")
        exe.write_bytes(busybox)
        exe.chmod(0o755)
        try:
            proc = subprocess.run([str(exe), "--list"], capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return parse_applet_list(proc.stdout)
            why = f"exit status {proc.returncode}"
        except (OSError, subprocess.TimeoutExpired, GuestImageError) as e:
            why = str(e)
    log(f"busybox --list did not run on this host ({why}); linking {len(FALLBACK_APPLETS)} common applets")
    return sorted(set(FALLBACK_APPLETS))


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


@dataclass
class LinuxGuest:
    """What build_linux_guest made."""

    kernel: Path
    initrd: Path
    kernel_release: str  # `uname -r` in the guest
    kernel_deb: Path
    busybox_deb: Path
    applets: int
    modules: list[str] = field(default_factory=list)  # in load order

    def run_command(self, cmdline: str = DEFAULT_CMDLINE, memory: str = DEFAULT_MEMORY) -> str:
        argv = ["pyvirt", "run", "--kernel", str(self.kernel), "--initrd", str(self.initrd),
                "--memory", memory, "--cmdline", cmdline]
        return shlex.join(argv)


def build_linux_guest(out: Path, kernel_package: str = DEFAULT_KERNEL_PACKAGE, *, init: bytes | None = None,
                      modules: Sequence[str] = (), cache: AptCache | None = None, compress: bool = True,
                      log: Log = _stderr_log) -> LinuxGuest:
    """Write out/vmlinuz and out/initrd.cpio.gz (or .cpio) from Debian packages."""
    cache = cache or AptCache(log=log)
    out.mkdir(parents=True, exist_ok=True)
    kernel_deb = resolve_kernel_package(cache, kernel_package, log)
    busybox_deb = cache.get(BUSYBOX_PACKAGE)

    found = DebPackage.from_file(busybox_deb).read_data(lambda p: p in ("bin/busybox", "usr/bin/busybox"))
    if not found:
        raise GuestImageError(f"{busybox_deb.name} has no bin/busybox; is it the busybox-static package?")
    busybox = next(iter(found.values()))
    applets = busybox_applets(busybox, log)

    kdeb = DebPackage.from_file(kernel_deb)

    def wanted(p: str) -> bool:
        return p.startswith("boot/vmlinuz-") or (bool(modules) and p.startswith("lib/modules/"))

    with tempfile.TemporaryDirectory(prefix="pyvirt-kernel-") as tmp:
        log(f"unpacking {kernel_deb.name}")
        kdeb.extract(tmp, wanted)
        images = sorted(Path(tmp, "boot").glob("vmlinuz-*"))
        if len(images) != 1:
            raise GuestImageError(f"{kernel_deb.name} holds {len(images)} boot/vmlinuz-* files, expected one; "
                                  "pass a linux-image package with --kernel-package (e.g. linux-image-cloud-amd64)")
        release = images[0].name.removeprefix("vmlinuz-")
        module_files: dict[str, bytes] = {}
        load_order: list[str] = []
        if modules:
            root = Path(tmp, "lib", "modules", release)
            if not root.is_dir():
                raise GuestImageError(f"{kernel_deb.name} has no lib/modules/{release}/; it ships no modules")
            index = ModuleIndex.from_dir(root)
            order, builtin = index.resolve(modules)
            for name in builtin:
                log(f"module {name} is built into {release}; nothing to load")
            for mod in order:
                module_files[mod.path] = (root / mod.path).read_bytes()
            module_files["modules.dep"] = modules_dep(index, order).encode()
            module_files["modules.alias"] = modules_alias(order).encode()
            for extra in MODULE_INDEX_FILES:
                if (root / extra).is_file():
                    module_files[extra] = (root / extra).read_bytes()
            load_order = [m.path for m in order]
        kernel_path = out / "vmlinuz"
        _write_atomic(kernel_path, lambda f: f.write(images[0].read_bytes()))

    contents = InitramfsContents(busybox=busybox, applets=applets, init=init or DEFAULT_INIT.encode(),
                                 kernel_release=release, module_files=module_files, load_order=load_order)
    initrd_path = out / ("initrd.cpio.gz" if compress else "initrd.cpio")

    def write_initrd(f: BinaryIO) -> None:
        if compress:
            with gzip_writer(f) as gz:
                write_initramfs(contents, gz)
        else:
            write_initramfs(contents, f)

    _write_atomic(initrd_path, write_initrd)
    return LinuxGuest(kernel=kernel_path, initrd=initrd_path, kernel_release=release, kernel_deb=kernel_deb,
                      busybox_deb=busybox_deb, applets=len(applets), modules=load_order)
