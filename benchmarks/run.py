#!/usr/bin/env python3
"""pyvirt benchmarks: pyvirt against QEMU microvm and a minimal C VMM, in one run.

    python3 benchmarks/run.py            # or: make bench
    python3 benchmarks/run.py --quick    # fewer repetitions, smaller loops (a smoke run)
    python3 benchmarks/run.py --virtio   # then the virtio device benchmark (benchmarks/virtio_bench.py)
    python3 benchmarks/run.py --linux    # then the Linux guest boot (benchmarks/linux_bench.py; 15-30 min)
    python3 benchmarks/run.py --migration  # then save/restore and live migration (benchmarks/migration_bench.py)

Measures, on the same guests for every VMM:

  start-to-exit   wall time from spawning the VMM process to its exit, for a guest
                  that prints a line on COM1 and writes to the debug-exit port
                  (guests/build/hello.elf when the guest kit has built it, else
                  this folder's own hello guest); pyvirt vs QEMU microvm.
  PIO exit        the cost of one port-I/O exit: (wall(N) - wall(0)) / N for a
                  guest doing N `out`s to port 0x80, in ring 0 and in ring 3;
                  pyvirt vs the C VMM (benchmarks/cvmm.c, the floor) and QEMU.
  idle RSS        VmRSS of a VM with 128 MiB of guest memory whose guest sits in
                  `cli; hlt`, sampled after about a second; pyvirt vs QEMU.

Prints every figure (min and median of the repetitions), the ratios and the
targets, and writes everything to benchmarks/results/latest.json. It never
fails on a timing: the exit status is 0 when every figure was measured and 1
when some could not be (the reason is printed and stored in the JSON).

Standard library only. Builds its C VMM and guests with gcc/as/ld into
benchmarks/build/. Installs QEMU with apt-get if it is missing (as root).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
GUEST_SRC = BENCH / "guests" / "pio.S"
GUEST_LD = BENCH / "guests" / "guest.ld"
CVMM_SRC = BENCH / "cvmm.c"
CVMM = BUILD / "cvmm"
KIT_HELLO = ROOT / "guests" / "build" / "hello.elf"

# Our guests write 0x15 to the debug-exit port 0xf4: status (0x15 << 1) | 1 = 43,
# which no VMM returns for an error of its own (QEMU and pyvirt use 1 for those).
DEBUG_EXIT_VALUE = 0x15
DEBUG_EXIT_OK = (DEBUG_EXIT_VALUE << 1) | 1

TARGET_START_RATIO = 1.0  # pyvirt start-to-exit <= 1.0 x QEMU microvm
TARGET_PIO_RATIO = 2.0  # pyvirt PIO exit <= 2 x the C VMM
TARGET_RSS_MIB = 30.0  # pyvirt idle RSS with 128 MiB of guest memory

RUN_TIMEOUT = 120.0  # seconds for any one VMM run


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- building

def _newer(target: Path, *sources: Path) -> bool:
    return not target.exists() or any(s.stat().st_mtime > target.stat().st_mtime for s in sources)


def _check(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr.strip()}")


def build_cvmm() -> Path:
    if _newer(CVMM, CVMM_SRC):
        BUILD.mkdir(parents=True, exist_ok=True)
        _check(["gcc", "-O2", "-Wall", "-o", str(CVMM), str(CVMM_SRC)])
    return CVMM


_LD_FLAGS: list[str] | None = None


def _ld_flags() -> list[str]:
    """`--no-warn-rwx-segments` where this ld knows it (binutils >= 2.39)."""
    global _LD_FLAGS
    if _LD_FLAGS is None:
        helptext = subprocess.run(["ld", "--help"], capture_output=True, text=True).stdout
        _LD_FLAGS = ["--no-warn-rwx-segments"] if "--no-warn-rwx-segments" in helptext else []
    return _LD_FLAGS


def build_guest(name: str, **defines: int) -> Path:
    """Assemble benchmarks/guests/pio.S with -D defines into build/guests/NAME.elf."""
    out = BUILD / "guests" / f"{name}.elf"
    if _newer(out, GUEST_SRC, GUEST_LD, Path(__file__)):
        out.parent.mkdir(parents=True, exist_ok=True)
        obj = out.with_suffix(".o")
        defines.setdefault("EXIT_VALUE", DEBUG_EXIT_VALUE)
        _check(["gcc", "-m32", "-c", *(f"-D{k}={v}" for k, v in defines.items()), str(GUEST_SRC), "-o", str(obj)])
        _check(["ld", "-m", "elf_i386", *_ld_flags(), "-nostdlib", "-T", str(GUEST_LD), "-o", str(out), str(obj)])
        obj.unlink()
    return out


def find_hello() -> tuple[Path, str]:
    """The guest kit's hello.elf if it is built (make -C guests, or make bench), else our own."""
    if KIT_HELLO.exists():
        return KIT_HELLO, "guests/build/hello.elf (guest kit)"
    return build_guest("hello", HELLO=1), ("benchmarks/build/guests/hello.elf (stand-in: guests/build/hello.elf "
                                           "is missing; make -C guests builds it)")


# --------------------------------------------------------------------------- running VMMs

@dataclass
class RunResult:
    seconds: float
    status: int
    stderr: str


@dataclass
class Vmm:
    """How to boot a kernel with one VMM: argv = prefix + kernel + suffix."""

    name: str
    argv: list[str]  # with "{kernel}" and "{mem}" placeholders
    env: dict[str, str] | None = None
    note: str = ""
    error: str | None = None  # why this VMM cannot be measured
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # per measurement: why it has no figure

    def command(self, kernel: Path, mem_mib: int = 128) -> list[str]:
        return [a.replace("{kernel}", str(kernel)).replace("{mem}", str(mem_mib)) for a in self.argv]

    def run(self, kernel: Path, mem_mib: int = 128) -> RunResult:
        cmd = self.command(kernel, mem_mib)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=self.env)
        try:
            _, err = p.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            raise RuntimeError(f"{' '.join(cmd)}: no exit after {RUN_TIMEOUT:.0f} s")
        t1 = time.perf_counter()
        return RunResult(t1 - t0, p.returncode, err.decode(errors="replace"))

    def run_ok(self, kernel: Path, ok_status: set[int], mem_mib: int = 128) -> RunResult:
        r = self.run(kernel, mem_mib)
        if r.status not in ok_status:
            raise RuntimeError(
                f"command: {' '.join(self.command(kernel, mem_mib))}\n"
                f"exit status {r.status} (expected {' or '.join(map(str, sorted(ok_status)))})\n"
                f"stderr:\n{r.stderr.strip() or '(empty)'}"
            )
        return r


def pyvirt_vmm() -> Vmm:
    venv = ROOT / ".venv" / "bin" / "pyvirt"
    if venv.exists():
        argv = [str(venv), "run"]
        note = f"{venv.relative_to(ROOT)} run"
        env = None
    else:
        argv = [sys.executable, "-m", "pyvirt", "run"]
        note = f"PYTHONPATH=src {Path(sys.executable).name} -m pyvirt run"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    argv += ["--kernel", "{kernel}", "--memory", "{mem}M", "--serial", "null"]
    return Vmm("pyvirt", argv, env=env, note=note)


def cvmm_vmm() -> Vmm:
    return Vmm("C VMM", [str(CVMM), "-m", "{mem}", "{kernel}"], note="benchmarks/cvmm.c")


def ensure_qemu() -> tuple[str | None, str]:
    """Path of qemu-system-x86_64, installing Debian's qemu-system-x86 if missing."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        return qemu, ""
    if os.geteuid() != 0:
        return None, "qemu-system-x86_64 is missing and this is not root (apt-get install qemu-system-x86)"
    log("  qemu-system-x86_64 is missing: apt-get install qemu-system-x86 ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        p = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"],
                           env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"installing qemu-system-x86 failed: {e}"
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        return qemu, ""
    return None, f"installing qemu-system-x86 failed:\n{p.stderr.strip()[-2000:]}"


def qemu_vmm(probe_kernel: Path) -> Vmm:
    qemu, why = ensure_qemu()
    if qemu is None:
        return Vmm("QEMU microvm", [], error=why)
    base = [qemu, "-M", "microvm,accel=kvm", "-m", "{mem}M", "-nodefaults", "-no-user-config", "-nographic",
            "-no-reboot", "-kernel", "{kernel}", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial", "null"]
    # `-cpu host` is what one would use; some nested KVM backends reject one of its
    # MSRs (IA32_ARCH_CAPABILITIES), so fall back step by step and say which one ran.
    errors = []
    for cpu in ("host", "host,-arch-capabilities", None):
        argv = base[:3] + (["-cpu", cpu] if cpu else []) + base[3:]
        vmm = Vmm("QEMU microvm", argv, note=f"-cpu {cpu}" if cpu else "default -cpu")
        try:
            vmm.run_ok(probe_kernel, {DEBUG_EXIT_OK})
            version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()
            vmm.note = f"{version[0] if version else qemu}; {vmm.note}"
            return vmm
        except RuntimeError as e:
            errors.append(str(e))
    return Vmm("QEMU microvm", [], error="QEMU does not boot the benchmark guest:\n" + "\n".join(errors))


# --------------------------------------------------------------------------- measuring

def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def measure_start(vmms: list[Vmm], kernel: Path, reps: int) -> None:
    """One warm-up run each, then `reps` rounds, the VMMs taking turns (fair to noise)."""
    ok = {DEBUG_EXIT_OK} if kernel != KIT_HELLO else None
    live = [v for v in vmms if v.error is None]
    status: dict[str, int] = {}
    for v in live:
        try:
            r = v.run(kernel)
            # The kit's hello may exit with any debug-exit value (odd status) or power off (0).
            good = r.status in ok if ok is not None else (r.status == 0 or r.status & 1 == 1)
            if not good:
                raise RuntimeError(f"command: {' '.join(v.command(kernel))}\nexit status {r.status}\n"
                                   f"stderr:\n{r.stderr.strip() or '(empty)'}")
            v.samples["start"] = []
            status[v.name] = r.status
        except RuntimeError as e:
            v.errors["start"] = str(e)
    live = [v for v in live if "start" in v.samples]
    for _ in range(reps):
        for v in live:
            if "start" in v.errors:
                continue
            try:
                r = v.run(kernel)
            except RuntimeError as e:
                v.errors["start"] = str(e)
                continue
            if r.status != status[v.name]:
                v.errors["start"] = (f"command: {' '.join(v.command(kernel))}\nexit status {r.status}, "
                                     f"{status[v.name]} in the warm-up run\nstderr:\n{r.stderr.strip() or '(empty)'}")
                continue
            v.samples["start"].append(r.seconds)


def measure_pio(vmms: list[Vmm], ring: int, count: int, reps: int) -> None:
    """Per-exit cost = (median wall(N) - median wall(0)) / N, for N `out`s in ring `ring`."""
    extra = {"CPL3": 1} if ring == 3 else {}
    k0 = build_guest(f"pio-cpl{ring}-0", PIO_COUNT=0, **extra)
    kn = build_guest(f"pio-cpl{ring}-{count}", PIO_COUNT=count, **extra)
    key = f"pio{ring}"
    live = []
    for v in vmms:
        if v.error is not None:
            continue
        try:
            v.run_ok(k0, {DEBUG_EXIT_OK})  # warm-up, and a check that it boots at all
            live.append(v)
            v.samples[key + "_0"] = []
            v.samples[key + "_n"] = []
        except RuntimeError as e:
            v.errors[key] = str(e)
    for _ in range(reps):
        for v in live:
            if key in v.errors:
                continue
            try:
                r0 = v.run_ok(k0, {DEBUG_EXIT_OK})
                rn = v.run_ok(kn, {DEBUG_EXIT_OK})
            except RuntimeError as e:
                v.errors[key] = str(e)
                continue
            v.samples[key + "_0"].append(r0.seconds)
            v.samples[key + "_n"].append(rn.seconds)
            if v.name == "C VMM":  # its own in-loop timing, as a cross-check
                for tok in rn.stderr.split():
                    if tok.startswith("ns_per_exit="):
                        v.samples.setdefault(key + "_inloop_ns", []).append(float(tok.split("=", 1)[1]))


def pio_per_exit(v: Vmm, ring: int, count: int) -> dict[str, float] | None:
    s0, sn = v.samples.get(f"pio{ring}_0"), v.samples.get(f"pio{ring}_n")
    if not s0 or not sn:
        return None
    return {
        "median": (statistics.median(sn) - statistics.median(s0)) / count,
        "min": (min(sn) - min(s0)) / count,
    }


def read_rss_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0])
    return out


def measure_rss(v: Vmm, kernel: Path, settle: float) -> dict[str, int]:
    """Start an idle 128 MiB VM, sample its RSS after `settle` seconds, stop it."""
    cmd = v.command(kernel, 128)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=v.env)
    try:
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            time.sleep(0.05)
        if p.poll() is not None:
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            raise RuntimeError(f"command: {' '.join(cmd)}\nexited with status {p.returncode} before the RSS "
                               f"sample (the idle guest should run until stopped)\nstderr:\n{err.strip() or '(empty)'}")
        return read_rss_kib(p.pid)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stderr:
            p.stderr.close()


# --------------------------------------------------------------------------- reporting

def host_info() -> dict[str, str]:
    info = {"kernel": platform.release(), "python": platform.python_version(), "cpus": str(os.cpu_count())}
    for mod in ("kvm_pvm", "kvm_intel", "kvm_amd"):
        if Path("/sys/module", mod).exists():
            info["kvm_backend"] = mod
            break
    else:
        info["kvm_backend"] = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def cpu_times() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return [int(x) for x in fields[1:]] if fields and fields[0] == "cpu" else None
    except (OSError, ValueError):
        return None


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of CPU time the hypervisor gave to others (a noisy neighbour) between two samples."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    delta = [b - a for a, b in zip(before[:8], after[:8])]
    total = sum(delta)
    return delta[7] / total if total > 0 else None


def fmt_time(sec: float | None) -> str:
    if sec is None:
        return "n/a"
    if sec >= 1.0:
        return f"{sec:.2f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.1f} ms"
    return f"{sec * 1e6:.2f} us"


def fmt_ratio(a: float | None, b: float | None) -> tuple[float | None, str]:
    if a is None or b is None or b <= 0:
        return None, "n/a"
    r = a / b
    return r, f"{r:.2f}x"


def host_preamble(load: float | None = None) -> dict[str, str] | None:
    """Log the host line of a benchmark; its host_info(), or None (with the
    reason logged) when /dev/kvm cannot be used and nothing can be measured."""
    info = host_info()
    extra = f"; load average {load:.2f}" if load is not None else ""
    log(f"  host: {info.get('cpu', '?')}, {info['cpus']} CPUs, Linux {info['kernel']}, "
        f"/dev/kvm = {info['kvm_backend']}{extra}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("  /dev/kvm is not usable here: nothing can be measured")
        return None
    return info


def write_results(path: Path, result: dict[str, object]) -> None:
    """Write a benchmark's results as JSON and say where (relative to the repo when inside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    try:
        shown = path.resolve().relative_to(ROOT)
    except ValueError:
        shown = path
    log(f"Results written to {shown}")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 repetitions, 20000-exit loops")
    ap.add_argument("--start-reps", type=int, help="start-to-exit repetitions after the warm-up (default 10)")
    ap.add_argument("--pio-reps", type=int, help="repetitions of each PIO run pair (default 5)")
    ap.add_argument("--pio-count", type=int, help="port writes in the long PIO run (default 200000)")
    ap.add_argument("--rss-settle", type=float, default=1.0, help="seconds before the RSS sample (default 1)")
    ap.add_argument("--json", type=Path, default=RESULTS / "latest.json", help="where to write the results")
    ap.add_argument("--virtio", action="store_true",
                    help="also run benchmarks/virtio_bench.py (virtio-blk and virtio-net against QEMU; "
                         "writes results/virtio-latest.json)")
    ap.add_argument("--migration", action="store_true",
                    help="also run benchmarks/migration_bench.py (save/restore and live migration of the dirty "
                         "guest against QEMU; about 2-3 min; writes results/migration-latest.json)")
    ap.add_argument("--linux", action="store_true",
                    help="also run benchmarks/linux_bench.py (Debian's kernel to a busybox /init under pyvirt and "
                         "QEMU microvm, one after the other; takes 15-30 min here; writes results/linux-latest.json)")
    args = ap.parse_args(argv)
    start_reps = args.start_reps or (3 if args.quick else 10)
    pio_reps = args.pio_reps or (3 if args.quick else 5)
    pio_count = args.pio_count or (20000 if args.quick else 200000)
    t_begin = time.monotonic()
    load_begin = os.getloadavg()
    cpu_begin = cpu_times()

    log("pyvirt benchmarks")
    info = host_info()
    log(f"  host: {info.get('cpu', '?')}, {info['cpus']} CPUs, Linux {info['kernel']}, "
        f"/dev/kvm = {info['kvm_backend']}, Python {info['python']}")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("  /dev/kvm is not usable here: nothing can be measured")
        return 1

    build_cvmm()
    idle = build_guest("idle", IDLE=1)
    probe = build_guest("pio-cpl0-0", PIO_COUNT=0)
    hello, hello_note = find_hello()
    cvmm, pyvirt, qemu = cvmm_vmm(), pyvirt_vmm(), qemu_vmm(probe)
    vmms = [pyvirt, qemu, cvmm]
    log(f"  pyvirt: {pyvirt.note}")
    log(f"  QEMU:   {qemu.note if qemu.error is None else 'unavailable: ' + qemu.error}")
    log(f"  C VMM:  {cvmm.note} -> {CVMM.relative_to(ROOT)}")
    log(f"  hello guest: {hello_note}")
    log("")

    log(f"[1/3] start-to-exit: 1 warm-up + {start_reps} runs each ...")
    measure_start(vmms, hello, start_reps)
    pio: dict[int, dict[str, dict[str, float] | None]] = {}
    for i, ring in enumerate((3, 0)):
        log(f"[2/3] PIO exit, ring {ring}: {pio_reps} x (N=0, N={pio_count}) each ...")
        measure_pio(vmms, ring, pio_count, pio_reps)
        pio[ring] = {v.name: pio_per_exit(v, ring, pio_count) for v in vmms}
    log(f"[3/3] idle RSS with 128 MiB of guest memory, sampled after {args.rss_settle:g} s ...")
    rss: dict[str, dict[str, int] | None] = {}
    rss_err: dict[str, str] = {}
    for v in vmms:
        if v.error is not None:
            rss[v.name] = None
            continue
        try:
            rss[v.name] = measure_rss(v, idle, args.rss_settle)
        except (RuntimeError, OSError) as e:
            rss[v.name] = None
            rss_err[v.name] = str(e)
    elapsed = time.monotonic() - t_begin

    # ---- figures per VMM
    def start_stats(v: Vmm) -> dict[str, float] | None:
        xs = v.samples.get("start")
        return stats(xs) if xs else None

    log("")
    log("Figures (min / median of the repetitions)")
    rows = []
    for v in vmms:
        st = start_stats(v)
        p3, p0 = pio[3].get(v.name), pio[0].get(v.name)
        r = rss.get(v.name)
        rows.append([
            v.name,
            f"{fmt_time(st['min'])} / {fmt_time(st['median'])}" if st else "n/a",
            f"{fmt_time(p3['min'])} / {fmt_time(p3['median'])}" if p3 else "n/a",
            f"{fmt_time(p0['min'])} / {fmt_time(p0['median'])}" if p0 else "n/a",
            f"{r['VmRSS'] / 1024:.1f} MiB" if r else "n/a",
        ])
    log(table(rows, ["VMM", "start-to-exit", "PIO exit, ring 3", "PIO exit, ring 0", "idle RSS (128 MiB)"]))
    inloop = {ring: cvmm.samples.get(f"pio{ring}_inloop_ns") for ring in (3, 0)}
    if any(inloop.values()):
        log("  C VMM's own in-loop timing (median ns per exit): "
            + ", ".join(f"ring {ring}: {statistics.median(xs):.0f} ns" for ring, xs in inloop.items() if xs))

    # ---- ratios and targets
    def med(d: dict[str, float] | None) -> float | None:
        return d["median"] if d else None

    comparisons = []

    def compare(figure: str, ours: dict[str, float] | None, peer_name: str, peer: dict[str, float] | None, fmt,
                target: str, limit: float | None, absolute: bool = False) -> None:
        """One row: verdict on the medians; the ratio of the minimums is shown beside it."""
        om, pm = med(ours), med(peer)
        ratio, ratio_s = fmt_ratio(om, pm)
        ratio_min, ratio_min_s = fmt_ratio(ours["min"] if ours else None, peer["min"] if peer else None)
        if limit is None:
            verdict = "info"
        else:
            value = om if absolute else ratio
            verdict = "n/a" if value is None else ("PASS" if value <= limit else "MISS")
        comparisons.append({"figure": figure, "pyvirt": om, "peer": peer_name, "peer_value": pm,
                            "ratio": ratio, "ratio_of_min": ratio_min, "target": target, "verdict": verdict,
                            "row": [figure, fmt(om), peer_name, fmt(pm), ratio_s, ratio_min_s, target, verdict]})

    mib = lambda kib: "n/a" if kib is None else f"{kib / 1024:.1f} MiB"  # noqa: E731
    compare("start-to-exit (hello)", start_stats(pyvirt), "QEMU microvm", start_stats(qemu), fmt_time,
            f"<= {TARGET_START_RATIO:.1f}x QEMU", TARGET_START_RATIO)
    for ring in (3, 0):
        compare(f"PIO exit, ring {ring}", pio[ring]["pyvirt"], "C VMM", pio[ring]["C VMM"], fmt_time,
                f"<= {TARGET_PIO_RATIO:.0f}x C VMM", TARGET_PIO_RATIO)
        compare(f"PIO exit, ring {ring}", pio[ring]["pyvirt"], "QEMU microvm", pio[ring]["QEMU microvm"], fmt_time,
                "-", None)
    pr, qr = rss.get("pyvirt"), rss.get("QEMU microvm")
    as_fig = lambda r: {"median": r["VmRSS"], "min": r["VmRSS"]} if r else None  # noqa: E731 (one sample)
    compare("idle RSS, 128 MiB guest", as_fig(pr), "QEMU microvm", as_fig(qr),
            mib, f"pyvirt <= {TARGET_RSS_MIB:.0f} MiB", TARGET_RSS_MIB * 1024, absolute=True)
    log("")
    log("pyvirt against its peers (medians; ratio = pyvirt / peer; the verdict uses the medians)")
    table_rows: list[list[str]] = [c.pop("row") for c in comparisons]  # type: ignore[misc]  # rows are list[str]
    log(table(table_rows, ["figure", "pyvirt", "peer", "peer value", "ratio", "ratio of min", "target", "verdict"]))
    steal = steal_fraction(cpu_begin, cpu_times())
    busy = load_begin[0] > 1.0 or (steal is not None and steal > 0.02)
    log(f"  noise: load average {load_begin[0]:.2f} before the run; "
        f"{'n/a' if steal is None else f'{steal * 100:.1f}%'} of CPU time stolen by the hypervisor during it"
        + (" -> expect noisy figures" if busy else ""))

    # ---- problems
    problems = []
    for v in vmms:
        if v.error:
            problems.append(f"{v.name}: {v.error}")
        for key, msg in v.errors.items():
            problems.append(f"{v.name} ({key}): {msg}")
    problems += [f"{name} (rss): {msg}" for name, msg in rss_err.items()]
    if problems:
        log("")
        log("Problems (figures shown as n/a):")
        for p in problems:
            log("  - " + p.replace("\n", "\n    "))
    log("")
    log("ring 3 = the `out` loop runs at CPL3 with IOPL=3; ring 0 = the same loop at CPL0.")
    if info["kvm_backend"] == "kvm_pvm":
        log("  (kvm_pvm emulates guest ring-0 code, so ring 3 is the honest per-exit figure on this host.)")
    log(f"PIO exit = (median wall time of N={pio_count} run - median of N=0 run) / N, whole processes, "
        f"same guest ELF for every VMM. Total benchmark time {elapsed:.0f} s.")

    # ---- JSON
    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": info,
        "settings": {"start_reps": start_reps, "pio_reps": pio_reps, "pio_count": pio_count,
                     "rss_settle_s": args.rss_settle, "hello_guest": hello_note},
        "vmms": {v.name: {"note": v.note, "error": v.error, "errors": v.errors, "command": v.argv,
                          "samples": v.samples} for v in vmms},
        "figures": {
            "start_to_exit_s": {v.name: start_stats(v) for v in vmms},
            "pio_exit_s": {f"ring{ring}": pio[ring] for ring in (3, 0)},
            "idle_rss_kib": rss,
        },
        "comparisons": comparisons,
        "problems": problems,
        "elapsed_s": elapsed,
        "load_average_1min_before": load_begin[0],
        "steal_fraction": steal,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    try:
        shown = args.json.resolve().relative_to(ROOT)
    except ValueError:
        shown = args.json
    log(f"Results written to {shown}")
    status = 1 if problems else 0
    if args.virtio:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        import virtio_bench

        log("")
        status |= virtio_bench.main(["--quick"] if args.quick else [])
    if args.migration:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        import migration_bench

        log("")
        status |= migration_bench.main(["--quick"] if args.quick else [])
    if args.linux:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        import linux_bench

        log("")
        status |= linux_bench.main([])
    return status


if __name__ == "__main__":
    sys.exit(main())
