#!/usr/bin/env python3
"""Real Linux guest: time to userspace under pyvirt, and what QEMU microvm does with the same guest.

    .venv/bin/python benchmarks/linux_bench.py               # or: benchmarks/run.py --linux
    .venv/bin/python benchmarks/linux_bench.py --qemu-plain  # also QEMU with only the user's command line

The guest is Debian's cloud kernel with a busybox initramfs (uncompressed, the
default /init), made by pyvirt.guestimage.debian.build_linux_guest into
benchmarks/results/linux-guest/ (the .deb files come from pyvirt's package
cache, ~/.cache/pyvirt/debs or $PYVIRT_CACHE). /init prints the marker line
PYVIRT-GUEST-UP, uname -r, MemTotal and nproc, then powers off.

Runs, one after the other (never two VMs at once):

  pyvirt        pyvirt run --kernel K --initrd I --memory 256M
                           --cmdline "console=ttyS0 FAST"
  QEMU microvm  qemu-system-x86_64 -M microvm -enable-kvm -m 256M -nodefaults
                -no-user-config -nographic -no-reboot -serial stdio -kernel K -initrd I
                -append "console=ttyS0 FAST EXTRA"
                (default CPU model: no -cpu; EXTRA = the kernel parameters pyvirt
                announced on stderr, "adding kernel parameters: ...", so both
                kernels get the same command line)
  QEMU plain    (--qemu-plain) the same QEMU command without EXTRA

FAST is the parameter list tests/integration/test_linux_guest.py boots with
(no delay-loop calibration, watchdogs, crypto self-tests, ...). -no-reboot
makes QEMU exit when the guest resets or panics (panic=-1), as pyvirt does,
instead of booting the kernel again.

For every run: wall time from spawning the process to the first serial output,
to the marker line and to the process's end (with its exit status), the CPU
time it used, and the last serial lines and stderr when the marker never came.
A run ends when the process exits, `--timeout` seconds pass without the marker
(default 900), `--after-marker` seconds pass after the marker without an exit
(default 180; with acpi=off the guest's power-off is a halt, which pyvirt turns
into an exit and QEMU does not), or QEMU reports a KVM internal error (QEMU
then pauses the VM for good). Serial output and stderr of every run are kept in
benchmarks/results/linux-guest/logs/, with arrival times.

Writes benchmarks/results/linux-latest.json. Never fails on a timing, nor
because QEMU does not reach the marker (that is a result); the exit status is 1
when the guest cannot be built, QEMU is missing, or pyvirt does not reach the
marker.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402  (host_info, table, ensure_qemu, cpu_times, steal_fraction, fmt_ratio)

ROOT = common.ROOT
RESULTS = common.RESULTS
GUEST_DIR = RESULTS / "linux-guest"
LOG_DIR = GUEST_DIR / "logs"
MARKER = "PYVIRT-GUEST-UP"
MEMORY = "256M"
# The parameter list of tests/integration/test_linux_guest.py (FAST): they only save
# time where kernel code is emulated (docs/pvm.md has the measurements).
FAST = ("nowatchdog cryptomgr.notests mitigations=off lpj=1000000 panic=-1 "
        "initcall_blacklist=trace_eval_init,load_system_certificate_list,init_trace_selftests")
USER_CMDLINE = f"console=ttyS0 {FAST}"
PVM_PARAMS_RE = re.compile(r"adding kernel parameters: (.*)$", re.M)
# QEMU pauses the VM (it does not exit) after these; nothing will happen afterwards.
QEMU_FATAL = ("KVM internal error", "emulation failure", "KVM: entry failed")
FATAL_SETTLE = 3.0  # seconds to let QEMU finish its register dump before it is stopped
PRINTK_TIME_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")

log = common.log


@dataclass
class Run:
    name: str
    argv: list[str]
    cmdline: str
    fatal: tuple[str, ...] = ()  # stderr text after which the VM can make no progress
    # results (seconds from spawning the process)
    first_output: float | None = None
    marker: float | None = None
    end: float | None = None
    status: int | None = None
    outcome: str = "not run"
    cpu_s: float | None = None
    serial_lines: list[tuple[float, str]] = field(default_factory=list)
    partial: str = ""  # serial text after the last newline
    stderr: str = ""
    load_before: float | None = None
    steal: float | None = None
    error: str | None = None  # could not be run at all

    def last_lines(self, n: int = 5) -> list[str]:
        lines = [text for _, text in self.serial_lines]
        if self.partial.strip():
            lines.append(self.partial)
        return lines[-n:]

    def guest_clock(self) -> float | None:
        """The last printk timestamp seen: how far the guest's own clock got."""
        for _, text in reversed(self.serial_lines):
            m = PRINTK_TIME_RE.match(text)
            if m:
                return float(m.group(1))
        return None

    def last_output(self) -> float | None:
        return self.serial_lines[-1][0] if self.serial_lines else self.first_output

    def to_json(self) -> dict:
        return {
            "command": self.argv, "cmdline": self.cmdline, "error": self.error, "outcome": self.outcome,
            "first_output_s": self.first_output, "marker_s": self.marker, "end_s": self.end,
            "exit_status": self.status, "cpu_s": self.cpu_s, "last_output_s": self.last_output(),
            "guest_clock_s": self.guest_clock(), "serial_line_count": len(self.serial_lines),
            "last_serial_lines": self.last_lines(), "stderr_tail": self.stderr.strip().splitlines()[-20:],
            "load_average_1min_before": self.load_before, "steal_fraction": self.steal,
        }


def _reader(fd: int, t0: float, on_chunk) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            return
        on_chunk(time.perf_counter() - t0, data)


def execute(r: Run, timeout: float, after_marker: float, progress: float, env: dict[str, str] | None = None) -> None:
    """Spawn r.argv and watch its serial output (stdout) and stderr until one of the end conditions."""
    lock = threading.Lock()
    marker_seen = threading.Event()
    fatal_at: list[float] = []
    buf = bytearray()

    def on_stdout(t: float, data: bytes) -> None:
        with lock:
            if r.first_output is None:
                r.first_output = t
            buf.extend(data)
            *complete, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            for raw in complete:
                text = raw.decode(errors="replace").rstrip("\r")
                r.serial_lines.append((t, text))
                if r.marker is None and MARKER in text:
                    r.marker = t
                    marker_seen.set()
            r.partial = bytes(buf).decode(errors="replace").rstrip("\r")
            if r.marker is None and MARKER in r.partial:
                r.marker = t
                marker_seen.set()

    errbuf: list[str] = []

    def on_stderr(t: float, data: bytes) -> None:
        with lock:
            errbuf.append(data.decode(errors="replace"))
            if r.fatal and not fatal_at and any(s in "".join(errbuf) for s in r.fatal):
                fatal_at.append(t)

    r.load_before = os.getloadavg()[0]
    cpu_before = common.cpu_times()
    ru_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(r.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, cwd=ROOT)
    except OSError as e:
        r.error = r.outcome = f"cannot start: {e}"
        return
    assert p.stdout is not None and p.stderr is not None
    readers = [threading.Thread(target=_reader, args=(p.stdout.fileno(), t0, on_stdout), daemon=True),
               threading.Thread(target=_reader, args=(p.stderr.fileno(), t0, on_stderr), daemon=True)]
    for th in readers:
        th.start()
    next_progress = progress
    stop_reason = None
    while True:
        try:
            p.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter() - t0
        if r.marker is None and now >= timeout:
            stop_reason = f"no marker after {timeout:.0f} s: stopped"
        elif r.marker is not None and now >= r.marker + after_marker:
            stop_reason = f"no exit {after_marker:.0f} s after the marker: stopped"
        elif fatal_at and now >= fatal_at[0] + FATAL_SETTLE:
            with lock:
                err = "".join(errbuf)
            what = next(s for s in r.fatal if s in err)
            stop_reason = f"QEMU reported '{what}' at {fatal_at[0]:.1f} s and paused the VM: stopped"
        if stop_reason:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            break
        if progress and now >= next_progress:
            next_progress += progress
            with lock:
                last = r.last_lines(1)
                n = len(r.serial_lines)
            state = f"marker at {r.marker:.1f} s" if r.marker is not None else "no marker yet"
            log(f"      {now:6.0f} s: {n} serial lines, {state}; last: {last[0][:100] if last else '(none)'}")
    r.end = time.perf_counter() - t0
    r.status = p.returncode
    for th in readers:
        th.join(timeout=5)
    ru_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r.cpu_s = (ru_after.ru_utime - ru_before.ru_utime) + (ru_after.ru_stime - ru_before.ru_stime)
    r.steal = common.steal_fraction(cpu_before, common.cpu_times())
    with lock:
        r.stderr = "".join(errbuf)
    if stop_reason:
        r.outcome = stop_reason
    elif r.status == 0:
        r.outcome = "exited 0"
    else:
        r.outcome = f"exited {r.status}"
    save_logs(r)


def save_logs(r: Run) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", r.name.lower()).strip("-")
    with open(LOG_DIR / f"{slug}.serial.txt", "w") as f:
        f.write(f"# {' '.join(r.argv)}\n# seconds from process start, then the serial line\n")
        for t, text in r.serial_lines:
            f.write(f"{t:9.3f}  {text}\n")
        if r.partial:
            f.write(f"{'':9}  {r.partial}   (no newline)\n")
    (LOG_DIR / f"{slug}.stderr.txt").write_text(r.stderr)


def build_guest() -> tuple[Any, str | None]:  # (LinuxGuest or None, why not)
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    try:
        from pyvirt.guestimage.debian import AptCache, build_linux_guest
    except ImportError as e:
        return None, f"cannot import pyvirt.guestimage: {e}"
    say = lambda msg: log(f"    guestimage: {msg}")  # noqa: E731
    try:
        guest = build_linux_guest(GUEST_DIR, cache=AptCache(log=say), compress=False, log=say)
    except Exception as e:  # GuestImageError, OSError, apt failures: all mean "no guest"
        return None, f"building the guest failed: {type(e).__name__}: {e}"
    return guest, None


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds a run may take to reach the marker before it is stopped (default 900)")
    ap.add_argument("--after-marker", type=float, default=180.0,
                    help="seconds a run may take after the marker to exit by itself (default 180)")
    ap.add_argument("--qemu-plain", action="store_true",
                    help="also run QEMU with only the user's command line (without pyvirt's added parameters)")
    ap.add_argument("--progress", type=float, default=60.0,
                    help="print a progress line every this many seconds of a run (0: never; default 60)")
    ap.add_argument("--json", type=Path, default=RESULTS / "linux-latest.json", help="where to write the results")
    args = ap.parse_args(argv)
    t_begin, load_begin, cpu_begin = time.monotonic(), os.getloadavg(), common.cpu_times()

    log("pyvirt Linux guest benchmark: time to the /init marker, pyvirt vs QEMU microvm (default CPU model)")
    info = common.host_preamble(load_begin[0])
    if info is None:
        return 1
    problems: list[str] = []
    log(f"  building the guest into {GUEST_DIR.relative_to(ROOT)} (uncompressed initramfs, default /init) ...")
    guest, why = build_guest()
    if guest is None:
        log(f"  {why}")
        return 1
    kernel, initrd = guest.kernel, guest.initrd
    log(f"  kernel {guest.kernel_release} ({kernel.stat().st_size / 2**20:.1f} MiB, from {guest.kernel_deb.name}); "
        f"initrd {initrd.stat().st_size / 2**20:.1f} MiB, {guest.applets} busybox applets")
    qemu, qemu_why = common.ensure_qemu()
    qemu_version = ""
    if qemu:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
        qemu_version = out[0] if out else qemu
    log(f"  timeout {args.timeout:.0f} s to the marker, {args.after_marker:.0f} s after it; "
        f"QEMU: {qemu_version or 'unavailable: ' + qemu_why}")

    venv = ROOT / ".venv" / "bin" / "pyvirt"
    pyvirt_cmd = [str(venv)] if venv.exists() else [sys.executable, "-m", "pyvirt"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pyvirt = Run("pyvirt", pyvirt_cmd + ["run", "--kernel", str(kernel), "--initrd", str(initrd),
                                         "--memory", MEMORY, "--cmdline", USER_CMDLINE], USER_CMDLINE)

    def qemu_run(name: str, cmdline: str) -> Run:
        argv = [qemu or "qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-m", MEMORY, "-nodefaults",
                "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
                "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
        return Run(name, argv, cmdline, fatal=QEMU_FATAL)

    runs = [pyvirt]
    log("")
    log(f"[pyvirt] {' '.join(pyvirt.argv[:-1])} \"{USER_CMDLINE}\"")
    execute(pyvirt, args.timeout, args.after_marker, args.progress, env=env)
    log(f"    -> marker {fmt_s(pyvirt.marker)}, end {fmt_s(pyvirt.end)} ({pyvirt.outcome})")
    m = PVM_PARAMS_RE.search(pyvirt.stderr)
    extra = m.group(1).strip() if m else ""
    if not extra:
        log("    pyvirt added no kernel parameters (no 'adding kernel parameters' on its stderr)")
    if pyvirt.marker is None:
        problems.append(f"pyvirt did not reach the marker ({pyvirt.outcome}); last serial lines:\n"
                        + "\n".join(pyvirt.last_lines()) + "\nstderr tail:\n"
                        + "\n".join(pyvirt.stderr.strip().splitlines()[-10:]))

    if qemu is None:
        problems.append(f"QEMU: {qemu_why}")
    else:
        same = qemu_run("QEMU microvm", f"{USER_CMDLINE} {extra}".strip())
        plan = [same]
        if args.qemu_plain and extra:
            plan.append(qemu_run("QEMU microvm, user cmdline only", USER_CMDLINE))
        elif args.qemu_plain:
            log("  --qemu-plain: pyvirt added nothing, so the plain command line is the same: not run twice")
        for r in plan:
            log("")
            log(f"[{r.name}] {' '.join(r.argv[:-1])} \"{r.cmdline}\"")
            execute(r, args.timeout, args.after_marker, args.progress)
            log(f"    -> marker {fmt_s(r.marker)}, end {fmt_s(r.end)} ({r.outcome})")
            runs.append(r)
    elapsed = time.monotonic() - t_begin

    # ---- table
    log("")
    log(f"Time to the marker line ({MARKER}) from process start; same kernel, initramfs and memory")
    rows = []
    for r in runs:
        rows.append([r.name, fmt_s(r.first_output), fmt_s(r.marker), fmt_s(r.end),
                     "n/a" if r.status is None else str(r.status), fmt_s(r.cpu_s),
                     "n/a" if r.guest_clock() is None else f"{r.guest_clock():.1f} s", r.outcome])
    log(common.table(rows, ["run", "first output", "marker", "end", "status", "CPU", "guest clock", "outcome"]))
    comparisons = []
    for r in runs[1:]:
        ratio, ratio_s = common.fmt_ratio(pyvirt.marker, r.marker)
        bound = None
        if ratio is None and pyvirt.marker is not None and r.marker is None and r.end and \
                r.outcome.startswith("no marker after"):
            bound = pyvirt.marker / r.end  # QEMU would have needed more than r.end seconds
            ratio_s = f"< {bound:.2f}x (QEMU still had no marker when stopped)"
        elif ratio is None and r.marker is None:
            ratio_s = "n/a (QEMU: no marker)"
        comparisons.append({"peer": r.name, "pyvirt_marker_s": pyvirt.marker, "peer_marker_s": r.marker,
                            "ratio": ratio, "ratio_upper_bound": bound, "peer_outcome": r.outcome})
        log(f"  pyvirt / {r.name}, seconds to the marker: {ratio_s}")
    log(f"  pyvirt added to the kernel command line (and QEMU microvm got the same): {extra or '(nothing)'}")
    for r in runs:
        if r.marker is None and r.error is None:
            log("")
            log(f"{r.name}: no marker; last serial output at {fmt_s(r.last_output())} of {fmt_s(r.end)}; "
                f"last {len(r.last_lines())} serial lines:")
            for line in r.last_lines() or ["(no serial output at all)"]:
                log(f"    | {line}")
            tail = r.stderr.strip().splitlines()[-8:]
            if tail:
                log("  stderr (last lines):")
                for line in tail:
                    log(f"    ! {line}")
    steal = common.steal_fraction(cpu_begin, common.cpu_times())
    log("")
    log(f"  noise: load average {load_begin[0]:.2f} before; "
        + ", ".join(f"{r.name} {r.load_before:.2f}" for r in runs if r.load_before is not None)
        + " at each run's start; "
        f"{'n/a' if steal is None else f'{steal * 100:.1f}%'} of CPU time stolen by the hypervisor")
    log(f"  serial logs with arrival times: {LOG_DIR.relative_to(ROOT)}/")
    if problems:
        log("")
        log("Problems:")
        for msg in problems:
            log("  - " + msg.replace("\n", "\n    "))
    log(f"Total time {elapsed:.0f} s.")

    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": info,
        "settings": {"timeout_s": args.timeout, "after_marker_s": args.after_marker, "memory": MEMORY,
                     "user_cmdline": USER_CMDLINE, "pyvirt_added_params": extra, "marker": MARKER,
                     "qemu_plain": args.qemu_plain, "qemu_version": qemu_version},
        "guest": {"kernel": str(kernel), "initrd": str(initrd), "kernel_release": guest.kernel_release,
                  "kernel_deb": guest.kernel_deb.name, "busybox_deb": guest.busybox_deb.name,
                  "kernel_bytes": kernel.stat().st_size, "initrd_bytes": initrd.stat().st_size},
        "runs": {r.name: r.to_json() for r in runs},
        "comparisons": comparisons,
        "problems": problems,
        "elapsed_s": elapsed,
        "load_average_1min_before": load_begin[0],
        "steal_fraction": steal,
    }
    common.write_results(args.json, result)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
