"""The `pyvirt` command line as an argparse parser.

`main` loads this only when `parse_run` leaves the command line to argparse
(help, errors, `host check`...): a plain `pyvirt run` does without it.
"""

from __future__ import annotations

import argparse

from .main import PVM_CHOICES, _int

EXIT_STATUS_HELP = """\
exit status:
  (V<<1)|1  the guest wrote V to the debug-exit port (QEMU isa-debug-exit)
  0         the guest powered off, or it was stopped (SIGINT, SIGTERM, Ctrl-A x)
  1         pyvirt error (configuration, kernel image, KVM)
  2         usage error
  32        the guest reset (i8042, port 0xcf9, ACPI reset)
  34        the guest triple-faulted
  36        unhandled vCPU exit (e.g. emulation failure); a report goes to stderr
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyvirt", description="pyvirt: a KVM virtual machine monitor in Python")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="boot a VM in the foreground",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_STATUS_HELP)
    run.add_argument("-v", "--verbose", dest="run_verbose", action="count", default=0,
                     help="more logging: unclaimed I/O, boot details (-vv for debug)")
    run.add_argument("--config", metavar="FILE", help="VM settings as JSON (command-line options override them)")
    run.add_argument("--kernel", metavar="FILE", help="PVH ELF, Linux bzImage, x86-64 ELF vmlinux or multiboot kernel")
    run.add_argument("--initrd", metavar="FILE", help="initial ramdisk")
    run.add_argument("--cmdline", metavar="TEXT", help="kernel command line")
    run.add_argument("--memory", "-m", metavar="SIZE", help="guest memory, e.g. 128M, 1G (default 128M)")
    run.add_argument("--cpus", "--smp", type=int, metavar="N", help="number of vCPUs (default 1)")
    run.add_argument("--serial", metavar="SPEC", help="stdio (default), null, file:PATH or socket:PATH")
    run.add_argument("--debug-exit-port", type=_int, metavar="PORT", help="debug-exit I/O port (default 0xf4)")
    run.add_argument("--pvm", choices=PVM_CHOICES, help="kvm_pvm compatibility layer (default auto)")
    run.add_argument("--api-socket", metavar="PATH",
                     help="serve the control API (docs/api.yaml) on this unix socket; see `pyvirt vm`")
    run.add_argument("--incoming", metavar="tcp:ADDR:PORT",
                     help="receive a live migration here (the machine comes from the source; see `pyvirt vm migrate`)")
    dev = run.add_argument_group("virtio devices")
    dev.add_argument("--disk", action="append", metavar="SPEC",
                     help="path=IMG[,readonly=on][,serial=ID][,iops=N][,bps=N]: a virtio-blk disk (repeatable)")
    dev.add_argument("--net", action="append", metavar="SPEC",
                     help="tap=NAME[,mac=MAC]: a virtio-net NIC on a TAP device, created if missing (repeatable)")
    dev.add_argument("--vsock", metavar="SPEC",
                     help="cid=N,socket=PATH: virtio-vsock; guest connections to port P reach PATH_P, "
                          "host connections to PATH send 'CONNECT P'")
    dev.add_argument("--rng", action="store_true", help="virtio-rng fed from the host's getrandom()")
    dev.add_argument("--balloon", action="store_true", help="virtio-balloon (inflate/deflate through the control API)")
    dev.add_argument("--console", choices=("serial", "virtio"), help="where the console goes (default serial)")
    dev.add_argument("--transport", choices=("pci", "mmio"), help="virtio transport (default pci)")

    restore = sub.add_parser("restore", help="start a VM from a snapshot file, in the foreground",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_STATUS_HELP,
                             description="Start the VM saved in FILE (by `pyvirt vm save` or `pyvirt vm snapshot`) "
                                         "where it left off. Its memory, vCPUs and devices come from the file; "
                                         "guest memory is mapped from it, not read.")
    restore.add_argument("-v", "--verbose", dest="run_verbose", action="count", default=0,
                         help="more logging: what was restored and how long it took (-vv for debug)")
    restore.add_argument("file", metavar="FILE", nargs="?",
                         help="the snapshot file; without it, with --api-socket, the VMM starts now and restores "
                              "the file named by `pyvirt vm restore` (PUT /restore) when asked")
    restore.add_argument("--serial", metavar="SPEC", help="stdio (default), null, file:PATH or socket:PATH")
    restore.add_argument("--api-socket", metavar="PATH", help="serve the control API on this unix socket")
    restore.add_argument("--lazy", action="store_true",
                         help="a compressed snapshot: run at once and decompress each page when the guest first "
                              "touches it (userfaultfd), not all of it first")
    restore.add_argument("--verify", action="store_true",
                         help="check the CRC of all saved guest memory first (reads the whole file)")
    restore.add_argument("--disks", choices=("overlay", "revert", "direct"), default="overlay",
                         help="disks the snapshot froze: overlay (default; write to a new overlay on the image), "
                              "revert (also revert qcow2 internal snapshots that changed), direct (write to them)")

    _add_vm_parser(sub)
    _add_image_parser(sub)

    host = sub.add_parser("host", help="host information")
    hsub = host.add_subparsers(dest="host_command", metavar="SUBCOMMAND")
    hsub.add_parser("check", help="check that this host can run VMs (like virt-host-validate)")
    return p


def _add_vm_parser(sub: argparse._SubParsersAction) -> None:
    vm = sub.add_parser("vm", help="control a running VM through its API socket",
                        description="Talk to a VM started with `pyvirt run --api-socket PATH`.")
    vsub = vm.add_subparsers(dest="vm_command", metavar="SUBCOMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api-socket", metavar="PATH", required=True, help="the VM's --api-socket path")
    common.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")
    common.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for the VM's answer (default 30; 600 for save and snapshot)")
    for name, text in (("status", "state, vCPUs, memory, uptime, devices"),
                       ("stats", "per-device and per-vCPU counters"),
                       ("pause", "stop running guest code"),
                       ("resume", "run guest code again"),
                       ("stop", "power the VM off")):
        vsub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
    for name, text in (("save", "write the VM's state to FILE, then stop it (restore with `pyvirt restore FILE`)"),
                       ("snapshot", "write the VM's state to FILE; the VM runs on")):
        p = vsub.add_parser(name, parents=[common], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("file", metavar="FILE", help="the snapshot file to write (replaced if it exists)")
        p.add_argument("--compress", choices=("none", "zstd", "lz4"), default="none",
                       help="compress guest memory (smaller file; a restore must then read it instead of mapping it)")
        if name == "snapshot":
            p.add_argument("--disks", choices=("overlay", "internal", "none"),
                           help="freeze writable disks with the snapshot: overlay (default; the VM goes on in a new "
                                "qcow2 overlay next to each image), internal (qcow2 internal snapshots), none")
    mig = vsub.add_parser("migrate", parents=[common], help="live-migrate the VM to `pyvirt run --incoming`",
                          description="Move the running VM to the pyvirt listening at URI (tcp:HOST:PORT, "
                                      "started with `pyvirt run --incoming`), showing progress until it is done.")
    mig.add_argument("uri", nargs="?", metavar="URI", help="tcp:HOST:PORT of the destination")
    mig.add_argument("--downtime", type=float, default=50.0, metavar="MS",
                     help="longest pause of the guest at switchover, in ms (default 50)")
    mig.add_argument("--max-rounds", type=int, default=30, metavar="N",
                     help="pre-copy rounds before giving up without post-copy (default 30)")
    mig.add_argument("--no-auto-converge", dest="auto_converge", action="store_false",
                     help="never throttle the vCPUs of a guest that dirties memory faster than the link")
    mig.add_argument("--postcopy", action="store_true",
                     help="move the VM after a few rounds and fetch the rest on demand (for guests that never converge)")
    mig.add_argument("--copy-disks", action="store_true",
                     help="copy the writable disks too, for hosts without shared storage (the destination creates "
                          "them at its --disk paths, or the same paths)")
    mig.add_argument("--bandwidth", metavar="SIZE", help="use at most SIZE per second of the link, e.g. 100M")
    mig.add_argument("--detach", action="store_true", help="start it and return (follow it with `pyvirt vm stats`)")
    mig.add_argument("--cancel", action="store_true", help="cancel the running migration (the VM runs on here)")
    rst = vsub.add_parser("restore", parents=[common], help="restore FILE in a waiting `pyvirt restore --api-socket`",
                          description="Restore the snapshot FILE in a VMM started ahead with `pyvirt restore "
                                      "--api-socket PATH` (no file): the fastest way back for a saved VM.")
    rst.add_argument("file", metavar="FILE", help="the snapshot file")
    balloon = vsub.add_parser("balloon", parents=[common], help="show or set the balloon",
                              description="Without TARGET, show the balloon; with it, ask the guest to give "
                                          "back TARGET of its memory (0 gives it all back).")
    balloon.add_argument("target", nargs="?", metavar="TARGET", help="balloon size, e.g. 64M, 1G, 0")


def _add_image_parser(sub: argparse._SubParsersAction) -> None:
    """`pyvirt image VERB`: qemu-img's verbs, with its option letters (cli/image.py)."""
    image = sub.add_parser("image", help="create, inspect, convert and check disk images (like qemu-img)",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Disk image tools with qemu-img's verbs and options, for raw and qcow2.",
                           epilog="exit status: 0 success, 1 error, 2 usage error "
                                  "(check: 2 corruptions, 3 leaks only, 63 format without checks)")
    isub = image.add_subparsers(dest="image_command", metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        return isub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")

    def fmt(p: argparse.ArgumentParser, letter: str = "-f", dest: str = "format",
            what: str = "the image's format (default: detected from its first bytes)") -> None:
        p.add_argument(letter, dest=dest, choices=("raw", "qcow2"), metavar="FMT", help=f"raw or qcow2: {what}")

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--output", choices=("human", "json"), default="human", help="output format (default human)")

    def share(p: argparse.ArgumentParser) -> None:
        p.add_argument("-U", "--force-share", action="store_true",
                       help="open without a lock, even while a VM writes the image (what you read may be stale)")

    def quiet(p: argparse.ArgumentParser) -> None:
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    def progress(p: argparse.ArgumentParser) -> None:
        p.add_argument("-p", "--progress", action="store_true",
                       help="show a progress bar (shown anyway when stderr is a terminal, unless -q)")

    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                       help="format options, e.g. cluster_size=64k,compat=1.1,lazy_refcounts=on (-o help lists them)")

    c = verb("create", "create a disk image")
    fmt(c, what="the new image's format (default raw)")
    c.add_argument("-b", dest="backing", metavar="BACKING", help="backing file (a path relative to the new image's folder)")
    fmt(c, "-F", "backing_format", "the backing file's format (default: detected)")
    options(c)
    c.add_argument("-u", dest="unsafe", action="store_true", help="do not open the backing file (SIZE is then required)")
    quiet(c)
    c.add_argument("filename", nargs="?", metavar="IMG", help="the new image (not needed with -o help)")
    c.add_argument("size", nargs="?", metavar="SIZE",
                   help="bytes, or with a k, M, G, T suffix (default with -b: the backing file's size)")

    i = verb("info", "show an image's format, sizes, backing file and snapshots")
    fmt(i)
    output(i)
    i.add_argument("--backing-chain", action="store_true", help="also show every image of the backing chain")
    share(i)
    i.add_argument("filename", metavar="IMG")

    k = verb("check", "check a qcow2 image's metadata for corruptions and leaked clusters")
    fmt(k)
    k.add_argument("-r", dest="repair", choices=("leaks", "all"), help="repair leaked clusters, or everything")
    output(k)
    share(k)
    quiet(k)
    k.add_argument("filename", metavar="IMG")

    v = verb("convert", "copy an image into a new image, possibly of another format, leaving out unallocated and zero ranges")
    fmt(v, what="the source's format (default: detected)")
    v.add_argument("-O", dest="output_format", choices=("raw", "qcow2"), default="raw", metavar="FMT",
                   help="raw (default) or qcow2: the new image's format")
    v.add_argument("-c", dest="compress", action="store_true", help="compress the data clusters (qcow2 only)")
    options(v)
    v.add_argument("-S", dest="sparse_size", default="4k", metavar="SIZE",
                   help="leave out zero runs of at least SIZE bytes (default 4k; 0 writes every byte)")
    v.add_argument("-n", dest="no_create", action="store_true",
                   help="write into an existing DST instead of creating it")
    v.add_argument("-t", dest="cache", choices=("unsafe", "writeback", "writethrough", "none", "directsync"),
                   default="unsafe", metavar="CACHE",
                   help="unsafe (default, as qemu-img): no flush at the end; any other mode flushes DST")
    progress(v)
    quiet(v)
    share(v)
    v.add_argument("source", metavar="SRC")
    v.add_argument("target", metavar="DST")

    r = verb("resize", "grow or shrink an image's virtual size")
    fmt(r)
    r.add_argument("--shrink", action="store_true", help="allow shrinking (the data past the new end is lost)")
    quiet(r)
    r.add_argument("filename", metavar="IMG")
    r.add_argument("size", metavar="[+|-]SIZE", help="the new size, or a change of size")

    b = verb("rebase", "change an image's backing file, keeping what the guest sees unless -u")
    fmt(b)
    b.add_argument("-b", dest="backing", required=True, metavar="BACKING",
                   help='the new backing file ("" for none), relative to the image\'s folder')
    fmt(b, "-F", "backing_format", "the new backing file's format (default: detected)")
    b.add_argument("-u", dest="unsafe", action="store_true",
                   help="unsafe: only rewrite the header, copying no data (when the new backing has the same content)")
    progress(b)
    quiet(b)
    b.add_argument("filename", metavar="IMG")

    m = verb("commit", "write an overlay's data into its backing file, then empty the overlay")
    fmt(m)
    m.add_argument("-d", dest="keep", action="store_true", help="keep the overlay's data (do not empty it)")
    progress(m)
    quiet(m)
    m.add_argument("filename", metavar="IMG")

    p = verb("map", "show where each range of the virtual disk comes from")
    fmt(p)
    output(p)
    share(p)
    p.add_argument("filename", metavar="IMG")

    s = verb("snapshot", "create, list, apply or delete a qcow2 image's internal snapshots")
    fmt(s)
    what = s.add_mutually_exclusive_group(required=True)
    what.add_argument("-c", dest="create", metavar="NAME", help="create a snapshot of the image's current state")
    what.add_argument("-l", dest="list", action="store_true", help="list the snapshots")
    what.add_argument("-a", dest="apply", metavar="NAME", help="revert the image to a snapshot (name or ID)")
    what.add_argument("-d", dest="delete", metavar="NAME", help="delete a snapshot (name or ID)")
    output(s)
    share(s)
    quiet(s)
    s.add_argument("filename", metavar="IMG")
