"""`python -m pyvirt.guestimage`: make and inspect guest images.

    python -m pyvirt.guestimage linux --out DIR [--kernel-package PKG] [--init FILE]
                                      [--modules mod1,mod2] [--cache DIR] [--no-gzip] [--refresh]
    python -m pyvirt.guestimage ls INITRD

Progress goes to stderr; the summary and the ready `pyvirt run` line to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cpio import format_listing, read_cpio
from .debian import (DEFAULT_CMDLINE, DEFAULT_KERNEL_PACKAGE, AptCache, build_linux_guest, default_cache_dir)
from .errors import GuestImageError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pyvirt.guestimage",
                                description="make bootable guest images for pyvirt")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    linux = sub.add_parser("linux", help="Debian kernel + busybox initramfs",
                           description="Download Debian's kernel and busybox-static with apt-get and write "
                                       "DIR/vmlinuz and DIR/initrd.cpio.gz, a guest that boots to a shell.")
    linux.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    linux.add_argument("--kernel-package", default=DEFAULT_KERNEL_PACKAGE, metavar="PKG",
                       help=f"linux-image package or metapackage (default {DEFAULT_KERNEL_PACKAGE})")
    linux.add_argument("--init", metavar="FILE", help="use FILE as /init instead of the default script")
    linux.add_argument("--modules", default="", metavar="LIST",
                       help="comma-separated kernel modules to include and load, e.g. virtio_blk,virtio_net "
                            "(dependencies are added)")
    linux.add_argument("--cache", metavar="DIR", type=Path,
                       help=f"where .deb files are kept (default $PYVIRT_CACHE or {default_cache_dir()})")
    linux.add_argument("--refresh", action="store_true", help="download the packages again even if cached")
    linux.add_argument("--no-gzip", dest="gzip", action="store_false",
                       help="write an uncompressed initrd.cpio")

    ls = sub.add_parser("ls", help="list the entries of an initramfs (newc cpio, plain, gzip or xz)")
    ls.add_argument("initrd", metavar="INITRD")
    return p


def cmd_linux(args: argparse.Namespace) -> int:
    init = None
    if args.init:
        try:
            init = Path(args.init).read_bytes()
        except OSError as e:
            raise GuestImageError(f"cannot read --init {args.init}: {e.strerror}") from e
    modules = [m.strip() for m in args.modules.split(",") if m.strip()]
    cache = AptCache(args.cache, refresh=args.refresh)
    guest = build_linux_guest(Path(args.out), args.kernel_package, init=init, modules=modules, cache=cache,
                              compress=args.gzip)
    print(f"kernel:  {guest.kernel} ({guest.kernel.stat().st_size} bytes, Linux {guest.kernel_release}, "
          f"from {guest.kernel_deb.name})")
    print(f"initrd:  {guest.initrd} ({guest.initrd.stat().st_size} bytes; busybox with {guest.applets} applets"
          f" from {guest.busybox_deb.name})")
    if guest.modules:
        print(f"modules: {', '.join(guest.modules)}")
    print("boot it with:")
    print(f"  {guest.run_command(DEFAULT_CMDLINE)}")
    print("  (add pyvirt.shell=1 to --cmdline for an interactive shell; see docs/linux-guests.md)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    try:
        data = Path(args.initrd).read_bytes()
    except OSError as e:
        raise GuestImageError(f"cannot read {args.initrd}: {e.strerror}") from e
    print(format_listing(read_cpio(data)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_linux(args) if args.command == "linux" else cmd_ls(args)
    except GuestImageError as e:
        print(f"pyvirt.guestimage: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
