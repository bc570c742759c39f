#!/usr/bin/env python3
"""virtio device speed: pyvirt against QEMU, same guest driver, one run.

    .venv/bin/python benchmarks/virtio_bench.py            # or: benchmarks/run.py --virtio
    .venv/bin/python benchmarks/virtio_bench.py --quick    # 1 repetition, 1 s phases (a smoke run)

The guest is guests/build/virtio-bench.elf (the guest kit's virtio library,
polled rings, everything at CPL3; see guests/README.md). Four set-ups, taking
turns in every repetition (the order rotates, so a noisy moment does not
always hit the same one):

  pyvirt mmio    pyvirt run --transport mmio
  QEMU microvm   -M microvm,acpi=off, virtio-mmio (version 2: force-legacy=false)
  pyvirt pci     pyvirt run --transport pci
  QEMU q35       -M q35, virtio-pci with disable-legacy=on

Both VMMs without vhost: QEMU's devices run in its main loop, pyvirt's in its
I/O thread. Figures (medians of the repetitions; higher is better):

  seq write / seq read   1 MiB requests, `--seq-qd` in flight (4), MB/s (10^6 bytes)
  4 KiB random read      IOPS at queue depth 1 and `--qd` (32)
  UDP guest->host        1400-byte datagrams for `--seconds`; Mbit/s of payload
                         that a UDP socket on the host received (the guest's own
                         count of what the device took is reported beside it)

and the ratio pyvirt / QEMU per transport against the targets (sequential
>= 1.0x, 4 KiB IOPS >= 0.5x, UDP >= 0.5x). The guest times each phase with
the TSC, whose rate it takes from kvmclock.

Disk: one raw image in a temporary directory (`--disk-mib`, 64), filled with
random bytes first, the same file for both VMMs. pyvirt does pread/pwrite
through the host page cache and fdatasync on FLUSH, so QEMU runs with
cache=writeback (page cache, flush = fdatasync) and aio=threads.

Network: a network namespace with a TAP (10.0.2.2/24, IPv6 off); the VMM runs
inside it and attaches to the TAP (pyvirt --net tap=..., QEMU -netdev
tap,vhost=off), a UDP receiver (Python, 16 MiB receive buffer) runs there too.
The namespace and the TAP are deleted at the end. Needs root and iproute2;
without them the UDP figures are n/a.

Writes benchmarks/results/virtio-latest.json. Never fails on a timing: the exit
status is 1 only when some figure could not be measured (reasons printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402  (host_info, table, ensure_qemu, cpu_times, steal_fraction)

ROOT = common.ROOT
GUEST = ROOT / "guests" / "build" / "virtio-bench.elf"
RESULTS = common.RESULTS
EXIT_OK = 1  # the guest wrote 0 to the debug-exit port
EXIT_NO_ARGS = (14 << 1) | 1  # virtio-bench without bench=: booted, refused
NETNS_PREFIX = "pyvirt-bench"
TAP = "pvbtap0"
HOST_IP, GUEST_IP, UDP_PORT = "10.0.2.2", "10.0.2.15", 7777
MAC = "52:54:00:12:34:56"
QEMU_CACHE = "writeback"

log = common.log

# UDP receiver, run inside the namespace: counts datagrams and bytes and the
# first and last arrival; stops when told on stdin and the socket has been
# idle for 0.2 s. Also reports the namespace's UDP counters and the TAP's.
RECEIVER = r"""
import json, socket, struct, sys, threading, time
addr, port, tap = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def udp():
    rows = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))
def tap_rx():
    try:
        return int(open("/sys/class/net/%s/statistics/rx_packets" % tap).read())
    except (OSError, ValueError):
        return -1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
s.bind((addr, port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
u0, t0 = udp(), tap_rx()
print("ready", flush=True)
buf = bytearray(65536)
n = nbytes = 0
first = last = 0.0
clock = time.perf_counter
while True:
    try:
        k = s.recv_into(buf)
    except OSError:
        if stop.is_set():
            break
        continue
    if not n:
        first = clock()
    n += 1
    nbytes += k
    last = clock()
u1, t1 = udp(), tap_rx()
print(json.dumps({"pkts": n, "bytes": nbytes, "seconds": last - first,
                  "rcvbuf_errors": u1.get("RcvbufErrors", 0) - u0.get("RcvbufErrors", 0),
                  "tap_rx_packets": t1 - t0 if t0 >= 0 and t1 >= 0 else None}), flush=True)
"""


@dataclass
class Setup:
    """One VMM with one transport."""

    name: str
    vmm: str  # "pyvirt" or "qemu"
    transport: str  # "mmio" or "pci"
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, list] = field(default_factory=dict)  # per-run extras (glitches, guest-side net, ...)
    errors: dict[str, str] = field(default_factory=dict)  # mode -> why it has no figure

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def note(self, key: str, value: object) -> None:
        self.info.setdefault(key, []).append(value)


class Bench:
    def __init__(self, args: argparse.Namespace, qemu: str | None, qemu_cpu: str | None) -> None:
        self.args = args
        self.qemu, self.qemu_cpu = qemu, qemu_cpu
        venv = ROOT / ".venv" / "bin" / "pyvirt"
        self.pyvirt = [str(venv)] if venv.exists() else [sys.executable, "-m", "pyvirt"]
        self.env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.disk: Path | None = None
        self.netns: str | None = None

    # --- commands ------------------------------------------------------------------
    def command(self, s: Setup, mode: str) -> list[str]:
        a = self.args
        append = f"bench={mode} seconds={a.seconds}"
        append += f" qd={a.qd} seq_qd={a.seq_qd}" if mode == "blk" else f" ip={GUEST_IP} peer={HOST_IP} port={UDP_PORT}"
        if s.vmm == "pyvirt":
            cmd = [*self.pyvirt, "run", "--kernel", str(GUEST), "--memory", "128M", "--serial", "stdio",
                   "--transport", s.transport, "--cmdline", append]
            cmd += ["--disk", f"path={self.disk}"] if mode == "blk" else ["--net", f"tap={TAP},mac={MAC}"]
            return cmd
        assert self.qemu is not None
        machine = (["-M", "microvm,accel=kvm,acpi=off", "-global", "virtio-mmio.force-legacy=false"]
                   if s.transport == "mmio" else ["-M", "q35,accel=kvm"])
        suffix = "-device" if s.transport == "mmio" else "-pci"
        legacy = "" if s.transport == "mmio" else ",disable-legacy=on"
        cmd = [self.qemu, *machine, *(["-cpu", self.qemu_cpu] if self.qemu_cpu else []), "-m", "128M",
               "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(GUEST),
               "-append", append]
        if mode == "blk":
            cmd += ["-drive", f"if=none,id=d0,file={self.disk},format=raw,cache={QEMU_CACHE},aio=threads",
                    "-device", f"virtio-blk{suffix},drive=d0{legacy}"]
        else:
            cmd += ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                    "-device", f"virtio-net{suffix},netdev=n0,mac={MAC}{legacy}"]
        return cmd

    def run_guest(self, s: Setup, mode: str) -> tuple[dict[str, float], float]:
        """Boot the guest once; the numbers of its BENCH line and the wall time."""
        cmd = self.command(s, mode)
        if mode == "net":
            cmd = ["ip", "netns", "exec", str(self.netns), *cmd]
        timeout = 120 + 8 * self.args.seconds
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=self.env,
                               cwd=ROOT)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"command: {' '.join(cmd)}\nno exit after {timeout} s\n"
                               f"output:\n{(e.stdout or b'').decode(errors='replace')[-2000:]}") from None
        wall = time.monotonic() - t0
        out = p.stdout.decode(errors="replace").replace("\r\n", "\n")
        m = re.search(rf"^BENCH {mode} (.*)$", out, re.M)
        if p.returncode != EXIT_OK or not m:
            raise RuntimeError(f"command: {' '.join(cmd)}\nexit status {p.returncode}\noutput:\n{out.strip()[-2000:]}"
                               f"\nstderr:\n{p.stderr.decode(errors='replace').strip()[-2000:] or '(empty)'}")
        values = {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(1))}
        values["phase_us"] = sum(float(us) for us in re.findall(r"^bench: \w+ \d+ requests, \d+ bytes in (\d+) us$",
                                                                 out, re.M)) or values.get("us", 0.0)
        return values, wall

    # --- one measurement of each kind ----------------------------------------------------
    def blk(self, s: Setup) -> None:
        v, wall = self.run_guest(s, "blk")
        for key in ("seq_write_mb_per_s", "seq_read_mb_per_s", "rand4k_qd1_iops", f"rand4k_qd{self.args.qd}_iops"):
            s.add(key, v[key])
        s.note("blk_used_idx_glitches", int(v.get("used_idx_glitches", 0)))
        s.note("blk_guest_vs_wall", (v["phase_us"] / 1e6, wall))

    def net(self, s: Setup) -> None:
        recv = subprocess.Popen(["ip", "netns", "exec", str(self.netns), sys.executable, "-c", RECEIVER, HOST_IP,
                                 str(UDP_PORT), TAP], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert recv.stdout is not None and recv.stdin is not None
            if recv.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the UDP receiver did not start: {recv.stderr.read() if recv.stderr else ''}")
            v, wall = self.run_guest(s, "net")
            recv.stdin.write("stop\n")
            recv.stdin.flush()
            line = recv.stdout.readline()
            host = json.loads(line)
        finally:
            if recv.poll() is None:
                try:
                    recv.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    recv.kill()
                    recv.wait()
        rate = host["bytes"] * 8 / host["seconds"] / 1e6 if host["seconds"] > 0 else 0.0
        s.add("udp_rx_mbit_per_s", rate)
        s.add("udp_guest_tx_mbit_per_s", v["udp_tx_mbit_per_s"])
        s.note("net_runs", {"guest_pkts": int(v["pkts"]), "host_pkts": host["pkts"],
                            "host_seconds": host["seconds"], "rcvbuf_errors": host["rcvbuf_errors"],
                            "tap_rx_packets": host["tap_rx_packets"],
                            "used_idx_glitches": int(v.get("used_idx_glitches", 0)), "wall_s": wall})

    # --- environment -------------------------------------------------------------------
    def make_disk(self, tmp: Path) -> None:
        self.disk = tmp / "disk.img"
        with open(self.disk, "wb") as f:
            for _ in range(self.args.disk_mib):
                f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())

    def make_netns(self) -> str | None:
        """Create the namespace with the TAP; None, or why not."""
        if os.geteuid() != 0 or shutil.which("ip") is None:
            return "needs root and iproute2 (ip) for a network namespace with a TAP"
        name = f"{NETNS_PREFIX}-{os.getpid()}"
        p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if p.returncode:
            return f"ip netns add failed: {p.stderr.strip()}"
        self.netns = name
        ns = ["ip", "netns", "exec", name]
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "tuntap", "add", "dev", TAP, "mode", "tap"],
                    ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                    ["ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP], ["ip", "link", "set", TAP, "up"]):
            p = subprocess.run(ns + cmd, capture_output=True, text=True)
            if p.returncode:
                return f"{' '.join(cmd)} failed in the namespace: {p.stderr.strip()}"
        return None

    def cleanup(self) -> None:
        if self.netns:
            subprocess.run(["ip", "netns", "exec", self.netns, "ip", "link", "del", TAP], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
            self.netns = None


def qemu_cpu_option(qemu: str) -> tuple[str | None, str]:
    """`-cpu host` unless this KVM refuses it (kvm_pvm and IA32_ARCH_CAPABILITIES), as run.py does."""
    errors = []
    for cpu in ("host", "host,-arch-capabilities", None):
        cmd = [qemu, "-M", "microvm,accel=kvm", *(["-cpu", cpu] if cpu else []), "-m", "128M", "-nodefaults",
               "-no-user-config", "-display", "none", "-serial", "none", "-monitor", "none", "-no-reboot",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", str(GUEST)]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if p.returncode == EXIT_NO_ARGS:
            return cpu, ""
        errors.append(f"-cpu {cpu}: status {p.returncode}: {p.stderr.decode(errors='replace').strip()[-300:]}")
    return None, "QEMU does not boot the guest: " + "; ".join(errors)


def median(xs: list[float] | None) -> float | None:
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition of 1-second phases")
    ap.add_argument("--reps", type=int, help="repetitions of every set-up (default 3, quick 1)")
    ap.add_argument("--seconds", type=int, help="seconds per phase in the guest (default 2, quick 1)")
    ap.add_argument("--qd", type=int, default=32, help="queue depth of the second 4 KiB random phase (default 32)")
    ap.add_argument("--seq-qd", type=int, default=4, help="1 MiB requests in flight, sequential phases (default 4)")
    ap.add_argument("--disk-mib", type=int, default=64, help="size of the raw disk image (default 64)")
    ap.add_argument("--only", choices=("blk", "net"), help="measure only the disk or only the network")
    ap.add_argument("--json", type=Path, default=RESULTS / "virtio-latest.json", help="where to write the results")
    args = ap.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.seconds = args.seconds or (1 if args.quick else 2)
    t_begin, load_begin, cpu_begin = time.monotonic(), os.getloadavg(), common.cpu_times()

    log("pyvirt virtio benchmark: pyvirt vs QEMU, same guest driver (guests/build/virtio-bench.elf)")
    info = common.host_preamble()
    if info is None:
        return 1
    p = subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], capture_output=True, text=True)
    if p.returncode or not GUEST.exists():
        log(f"  make -C guests failed:\n{p.stderr.strip()}")
        return 1
    qemu, why = common.ensure_qemu()
    qemu_cpu, cpu_err = qemu_cpu_option(qemu) if qemu else (None, why)
    setups = [Setup("pyvirt mmio", "pyvirt", "mmio"), Setup("QEMU microvm", "qemu", "mmio"),
              Setup("pyvirt pci", "pyvirt", "pci"), Setup("QEMU q35", "qemu", "pci")]
    problems: list[str] = []
    if qemu is None or cpu_err:
        problems.append(f"QEMU: {cpu_err or why}")
        setups = [s for s in setups if s.vmm == "pyvirt"]
    bench = Bench(args, qemu, qemu_cpu)
    modes = ["blk", "net"] if args.only is None else [args.only]
    log(f"  QEMU: {qemu} -cpu {qemu_cpu}; disk: raw, {args.disk_mib} MiB in a temporary directory, "
        f"QEMU cache={QEMU_CACHE},aio=threads (pyvirt: page cache, FLUSH = fdatasync)")
    log(f"  {args.reps} repetition(s) x {len(setups)} set-ups; {args.seconds} s per phase; "
        f"seq 1 MiB at QD {args.seq_qd}, 4 KiB random at QD 1 and {args.qd}; UDP 1400-byte payload")
    net_error = None
    try:
        with tempfile.TemporaryDirectory(prefix="pyvirt-virtio-bench-") as tmp:
            if "blk" in modes:
                bench.make_disk(Path(tmp))
            if "net" in modes:
                net_error = bench.make_netns()
                if net_error:
                    problems.append(f"network: {net_error}")
            for rep in range(args.reps):
                order = setups[rep % len(setups):] + setups[:rep % len(setups)]
                for mode in modes:
                    if mode == "net" and net_error:
                        continue
                    log(f"[{rep + 1}/{args.reps}] {mode}: " + ", ".join(s.name for s in order))
                    for s in order:
                        if mode in s.errors:
                            continue
                        try:
                            (bench.blk if mode == "blk" else bench.net)(s)
                        except (RuntimeError, OSError, ValueError, KeyError) as e:
                            s.errors[mode] = str(e)
    finally:
        bench.cleanup()
    elapsed = time.monotonic() - t_begin

    # ---- figures
    qd_key = f"rand4k_qd{args.qd}_iops"
    figures = []
    if "blk" in modes:
        figures += [("seq_write_mb_per_s", "seq write 1 MiB, MB/s", 1.0),
                    ("seq_read_mb_per_s", "seq read 1 MiB, MB/s", 1.0),
                    ("rand4k_qd1_iops", "4 KiB rand read QD1, IOPS", 0.5),
                    (qd_key, f"4 KiB rand read QD{args.qd}, IOPS", 0.5)]
    if "net" in modes:
        figures.append(("udp_rx_mbit_per_s", "UDP guest->host, Mbit/s", 0.5))
    by_name = {s.name: s for s in setups}
    fmt = lambda x: "n/a" if x is None else f"{x:,.0f}"  # noqa: E731
    spread = lambda xs: "" if not xs or len(xs) < 2 else f" ({min(xs):,.0f}-{max(xs):,.0f})"  # noqa: E731

    log("")
    log("Figures (median of the repetitions, (min-max) when more than one; higher is better)")
    rows = [[label] + [fmt(median(s.samples.get(key))) + spread(s.samples.get(key)) for s in setups]
            for key, label, _ in figures]
    if "net" in modes:
        rows.append(["  (UDP as the guest sent it)"] + [fmt(median(s.samples.get("udp_guest_tx_mbit_per_s")))
                                                        for s in setups])
    log(common.table(rows, ["figure"] + [s.name for s in setups]))

    comparisons = []
    for transport, peer in (("mmio", "QEMU microvm"), ("pci", "QEMU q35")):
        ours, theirs = by_name.get(f"pyvirt {transport}"), by_name.get(peer)
        for key, label, limit in figures:
            a = median(ours.samples.get(key)) if ours else None
            b = median(theirs.samples.get(key)) if theirs else None
            ratio = a / b if a is not None and b else None
            verdict = "n/a" if ratio is None else ("PASS" if ratio >= limit else "MISS")
            comparisons.append({"figure": label, "key": key, "transport": transport, "peer": peer, "pyvirt": a,
                                "peer_value": b, "ratio": ratio, "target": limit, "verdict": verdict})
    log("")
    log("pyvirt against QEMU (ratio = pyvirt / QEMU of the medians; target = the lowest ratio that passes)")
    log(common.table([[str(c["figure"]), str(c["transport"]), fmt(c["pyvirt"]), f"{c['peer']} {fmt(c['peer_value'])}",
                       "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}x", f">= {c['target']:.1f}x",
                       str(c["verdict"])]
                      for c in comparisons], ["figure", "transport", "pyvirt", "QEMU", "ratio", "target", "verdict"]))

    # ---- what else the runs said
    log("")
    for s in setups:
        glitches = sum(s.info.get("blk_used_idx_glitches", [])) + sum(r["used_idx_glitches"]
                                                                       for r in s.info.get("net_runs", []))
        net = s.info.get("net_runs", [])
        lost = sum(r["guest_pkts"] - r["host_pkts"] for r in net)
        drops = sum(r["rcvbuf_errors"] for r in net)
        bad_clock = [(g, w) for g, w in s.info.get("blk_guest_vs_wall", []) if g > w]
        parts = [f"used->idx glitches seen by the guest: {glitches}"]
        if net:
            parts.append(f"UDP sent by the guest but not received: {lost} of {sum(r['guest_pkts'] for r in net)}"
                         f" (receiver buffer drops {drops})")
        if bad_clock:
            parts.append(f"guest phase time exceeds the wall time in {len(bad_clock)} run(s): TSC rate wrong?")
        log(f"  {s.name}: " + "; ".join(parts))
        if glitches:
            problems.append(f"{s.name}: the guest saw used->idx jump ahead of the buffers it had given "
                            f"{glitches} time(s) (a non-atomic used-index store; counted and skipped, the "
                            "figures are still right)")
    steal = common.steal_fraction(cpu_begin, common.cpu_times())
    log(f"  noise: load average {load_begin[0]:.2f} before; "
        f"{'n/a' if steal is None else f'{steal * 100:.1f}%'} of CPU time stolen by the hypervisor during the run")
    failures = [f"{s.name} ({mode}): {msg}" for s in setups for mode, msg in s.errors.items()]
    if problems or failures:
        log("")
        log("Problems:")
        for msg in problems + failures:
            log("  - " + msg.replace("\n", "\n    "))
    log(f"Total time {elapsed:.0f} s.")

    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": info,
        "settings": {"reps": args.reps, "seconds_per_phase": args.seconds, "qd": args.qd, "seq_qd": args.seq_qd,
                     "disk_mib": args.disk_mib, "qemu_cache": QEMU_CACHE, "qemu_cpu": qemu_cpu,
                     "udp_payload": 1400, "modes": modes},
        "setups": {s.name: {"vmm": s.vmm, "transport": s.transport, "samples": s.samples, "info": s.info,
                            "errors": s.errors, "commands": {m: bench.command(s, m) for m in modes}}
                   for s in setups},
        "comparisons": comparisons,
        "problems": problems + failures,
        "elapsed_s": elapsed,
        "load_average_1min_before": load_begin[0],
        "steal_fraction": steal,
    }
    common.write_results(args.json, result)
    return 1 if failures or any(c["verdict"] == "n/a" for c in comparisons) else 0


if __name__ == "__main__":
    sys.exit(main())
