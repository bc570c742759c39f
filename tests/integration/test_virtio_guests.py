"""The virtio guests of the guest kit under pyvirt: every device proven from
inside the guest, on both transports (virtio-pci and virtio-mmio).

The guests (guests/virtio-*.c, driver library in guests/virtio/) find their
device on whichever transport the VMM offers and print which one; the tests
check that line against `--transport`. Host-side effects are checked here
too: the disk file's bytes, the UDP and vsock peers, the VMM's RSS.

The same guests run under QEMU in test_virtio_guests_qemu.py, which tells a
guest bug from a VMM bug.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from vmrun import DEFAULT_TIMEOUT, ROOT, Run, kvm_usable, pyvirt_cmd


def _run_help() -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    try:
        p = subprocess.run(pyvirt_cmd() + ["run", "--help"], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return p.stdout


RUN_HELP = _run_help()

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif("--disk" not in RUN_HELP, reason="virtio devices not wired yet"),
]

TRANSPORTS = ["pci", "mmio"]

# exit codes of the virtio guests (guests/README.md): pyvirt exits (V << 1) | 1
FAIL = {"blk": 8, "rng": 9, "net": 10, "vsock": 11, "balloon": 12, "fuzz": 13}


def ok(run: Run) -> None:
    assert run.status == 1, f"status {run.status}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"


def used_transport(run: Run, name: str, transport: str) -> None:
    """The guest found its device on the transport the VMM was told to use."""
    assert re.search(rf"^{name}: using {transport} ", run.stdout, re.M), run.stdout


def blk_pattern(sectors: int, seed: int) -> bytes:
    """What virtio-blk.elf writes: word j of sector s is seed << 32 | s << 8 | j."""
    return b"".join(struct.pack("<64Q", *((seed << 32) | (s << 8) | j for j in range(64))) for s in range(sectors))


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def pyvirt_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"))


# ---- virtio-blk -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_writes_flushes_and_reads_back(boot, tmp_path, transport):
    img = tmp_path / "disk.img"
    img.write_bytes(b"\xee" * (4 << 20))
    seed, sectors = 0x1234ABCD, 512
    r = boot("virtio-blk", "--memory", "64M", "--transport", transport,
             "--disk", f"path={img},serial=pyvirt-disk-7", "--cmdline", f"sectors={sectors} seed={seed:#x}")
    ok(r)
    used_transport(r, "blk", transport)
    lines = r.lines()
    assert "blk: capacity 8192 sectors" in lines
    assert "blk: serial pyvirt-disk-7" in lines
    assert f"blk: wrote {sectors} sectors" in lines
    assert f"blk: verified {sectors} sectors" in lines
    assert "blk: read past end: status 1" in lines  # VIRTIO_BLK_S_IOERR
    assert "blk: PASS" in lines
    data = img.read_bytes()
    assert data[:sectors * 512] == blk_pattern(sectors, seed)
    assert data[sectors * 512:] == b"\xee" * ((4 << 20) - sectors * 512)  # nothing else touched


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (Debian's qemu-utils)")
def test_blk_on_a_qcow2_overlay_of_a_read_only_base(boot, tmp_path):
    """A linked clone: the guest writes through a thin qcow2 overlay; the raw
    base is untouched, qemu-img finds the overlay clean, and the data the
    guest wrote reads back through qemu-img's view of the chain."""
    from pyvirt.disk.qcow2 import create

    base = tmp_path / "base.raw"
    base.write_bytes(b"\xee" * (4 << 20))
    overlay = tmp_path / "overlay.qcow2"
    create(str(overlay), None, backing_file="base.raw", backing_format="raw")  # relative, like qemu-img -b
    seed, sectors = 0x5EED, 256
    r = boot("virtio-blk", "--memory", "64M", "--disk", f"path={overlay}", "--cmdline", f"sectors={sectors} seed={seed:#x}")
    ok(r)
    assert "blk: capacity 8192 sectors" in r.lines()
    assert base.read_bytes() == b"\xee" * (4 << 20)
    check = subprocess.run(["qemu-img", "check", str(overlay)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    raw = tmp_path / "flat.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(overlay), str(raw)], check=True)
    flat = raw.read_bytes()
    assert flat[:sectors * 512] == blk_pattern(sectors, seed)
    assert flat[sectors * 512:] == b"\xee" * ((4 << 20) - sectors * 512)
    assert overlay.stat().st_blocks * 512 < 2 << 20  # thin: only what the guest wrote (plus metadata)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_blk_read_only_disk_refuses_writes(boot, tmp_path, transport):
    img = tmp_path / "ro.img"
    content = os.urandom(1 << 20)
    img.write_bytes(content)
    r = boot("virtio-blk", "--memory", "64M", "--transport", transport,
             "--disk", f"path={img},readonly=on", "--cmdline", "sectors=64 try-write")
    ok(r)
    used_transport(r, "blk", transport)
    assert f"blk: read-only, 64 sectors fnv1a {fnv1a64(content[:64 * 512]):#018x}" in r.lines()
    assert "blk: write to read-only device: status 1" in r.lines()
    assert img.read_bytes() == content


# ---- virtio-rng -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rng_gives_random_bytes(boot, transport):
    r = boot("virtio-rng", "--memory", "64M", "--transport", transport, "--rng")
    ok(r)
    used_transport(r, "rng", transport)
    blocks = re.findall(r"^rng: block \d: ([0-9a-f]{32})$", r.stdout, re.M)
    assert len(blocks) == 2 and blocks[0] != blocks[1]
    assert "rng: PASS" in r.lines()


# ---- virtio-net -------------------------------------------------------------------

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(65536)
        print("echo", len(data), peer[0], peer[1], flush=True)
        s.sendto(data, peer)
except socket.timeout:
    pass
"""


@pytest.fixture
def netns():
    """A network namespace with a TAP device (pvtap0) holding 10.0.2.2/24,
    the guest's peer; pyvirt runs inside it and attaches to the TAP."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    name, tap = f"pyvirt-net-{os.getpid()}", "pvtap0"
    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot create a network namespace: {p.stderr.strip()}")
    try:
        ns = ["ip", "netns", "exec", name]
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                    ["ip", "addr", "add", "10.0.2.2/24", "dev", tap], ["ip", "link", "set", tap, "up"]):
            subprocess.run(ns + cmd, check=True, capture_output=True)
        yield name, tap
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_net_arp_ping_and_udp_echo(guest_kit, netns, transport):
    if kvm_usable():
        pytest.skip(kvm_usable())
    name, tap = netns
    ns = ["ip", "netns", "exec", name]
    echo = subprocess.Popen(ns + ["python3", "-c", UDP_ECHO, "10.0.2.2", "7777", "60"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert echo.stdout.readline().strip() == "ready"
        mac = "52:54:00:12:34:99"
        p = subprocess.run(ns + pyvirt_cmd() + ["run", "--kernel", str(guest_kit / "virtio-net.elf"), "--memory", "64M",
                                                "--transport", transport, "--net", f"tap={tap},mac={mac}",
                                                "--cmdline", "ip=10.0.2.15 peer=10.0.2.2 port=7777"],
                           capture_output=True, timeout=DEFAULT_TIMEOUT, env=pyvirt_env(), cwd=ROOT)
        r = Run(p.returncode, p.stdout.decode(errors="replace").replace("\r\n", "\n"),
                p.stderr.decode(errors="replace"))
    finally:
        echo.terminate()
        out = echo.communicate(timeout=10)[0]
    ok(r)
    used_transport(r, "net", transport)
    lines = r.lines()
    assert f"net: mac {mac}" in lines
    assert "net: ip 10.0.2.15 peer 10.0.2.2" in lines
    assert any(ln.startswith("net: ping reply from 10.0.2.2 seq ") for ln in lines), lines
    assert "net: udp echo ok, 100 bytes from 10.0.2.2:7777" in lines
    assert "echo 100 10.0.2.15 40000" in out  # the datagram really reached the host side


# ---- virtio-vsock -----------------------------------------------------------------


def _unix_echo_server(path: str, stop: threading.Event, seen: list[bytes]) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(0.2)

    def serve() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.settimeout(30)
                    while True:
                        try:
                            data = conn.recv(4096)
                        except OSError:
                            break
                        if not data:
                            break
                        seen.append(data)
                        conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vsock_connects_and_echoes(boot, tmp_path, transport):
    sock = str(tmp_path / "v.sock")
    stop, seen = threading.Event(), []
    # guest connections to host port P reach the unix socket PATH_P
    t = _unix_echo_server(f"{sock}_1234", stop, seen)
    try:
        r = boot("virtio-vsock", "--memory", "64M", "--transport", transport, "--vsock", f"cid=42,socket={sock}",
                 "--cmdline", "port=1234 msg=hello")
    finally:
        stop.set()
        t.join(5)
    ok(r)
    used_transport(r, "vsock", transport)
    lines = r.lines()
    assert "vsock: guest cid 42" in lines
    assert "vsock: connected to 2:1234 from 42:50000" in lines
    assert 'vsock: received "hello"' in lines
    assert "vsock: closed by peer RST" in lines  # clean shutdown: SHUTDOWN, then the device's RST
    assert b"".join(seen) == b"hello"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_vsock_refused_without_listener(boot, tmp_path, transport):
    r = boot("virtio-vsock", "--memory", "64M", "--transport", transport,
             "--vsock", f"cid=5,socket={tmp_path / 'none.sock'}", "--cmdline", "port=4321")
    assert r.status == (FAIL["vsock"] << 1) | 1, r.stdout + r.stderr
    assert "vsock: FAIL connection refused (RST)" in r.lines()


# ---- virtio-balloon ----------------------------------------------------------------

def _control_option() -> str | None:
    """The `pyvirt run` option that opens the VMM's control API socket."""
    for opt in ("--api-socket", "--control-socket", "--control"):
        if opt in RUN_HELP:
            return opt
    return None


def set_balloon_target(api_socket: str, pages: int) -> None:
    """Ask the VMM for a new balloon size through its control API
    (docs/api.yaml: PUT /balloon {"target": bytes})."""
    import json

    body = json.dumps({"target": pages * 4096}).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(api_socket)
        s.sendall(b"PUT /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        reply = s.recv(4096)
    assert reply.split(b" ", 2)[1].startswith(b"2"), reply


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_balloon_inflate_lowers_rss_and_deflate_returns_pages(guest_kit, tmp_path, transport):
    if kvm_usable():
        pytest.skip(kvm_usable())
    option = _control_option()
    if option is None:
        pytest.skip("no control API to set the balloon target yet")
    api = str(tmp_path / "api.sock")
    target = 16384  # 64 MiB
    proc = subprocess.Popen(pyvirt_cmd() + ["run", "--kernel", str(guest_kit / "virtio-balloon.elf"),
                                            "--memory", "192M", "--transport", transport, "--balloon", option, api,
                                            "--cmdline", "timeout=60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=pyvirt_env(), cwd=ROOT)
    lines: list[str] = []
    rss_before = rss_after = 0
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            if line == "balloon: target 0 pages" and not rss_before:  # driver ready, pool pages touched
                time.sleep(0.2)
                rss_before = rss_kib(proc.pid)
                set_balloon_target(api, target)
            elif line == "balloon: DONE":
                time.sleep(0.5)
                rss_after = rss_kib(proc.pid)
                set_balloon_target(api, 0)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        err = proc.stderr.read().decode(errors="replace")
    out = "\n".join(lines)
    assert status == 1, f"status {status}\n{out}\n{err}"
    assert re.search(rf"^balloon: using {transport} ", out, re.M)
    assert f"balloon: actual {target} pages" in lines
    assert "balloon: actual 0 pages" in lines
    assert "balloon: PASS" in lines
    # the host dropped the memory behind the inflated pages
    assert rss_before - rss_after > (target * 4 * 3) // 4, (rss_before, rss_after)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_balloon_without_target_times_out(boot, transport):
    # no target ever comes: the guest gives up after timeout= seconds (exit 12)
    r = boot("virtio-balloon", "--memory", "64M", "--transport", transport, "--balloon", "--cmdline", "timeout=2")
    assert r.status == (FAIL["balloon"] << 1) | 1, r.stdout + r.stderr
    used_transport(r, "balloon", transport)
    assert "balloon: target 0 pages" in r.lines()
    assert "balloon: FAIL timeout waiting for a target" in r.lines()


# ---- virtio-fuzz ------------------------------------------------------------------


def _fuzz_devices(tmp_path: Path) -> list[str]:
    img = tmp_path / "fuzz.img"
    img.write_bytes(bytes(1 << 20))
    return ["--disk", f"path={img}", "--rng", "--balloon", "--vsock", f"cid=3,socket={tmp_path / 'fz.sock'}"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fuzz_malformed_rings_do_not_kill_the_vmm(boot, tmp_path, transport):
    r = boot("virtio-fuzz", "--memory", "64M", "--transport", transport, *_fuzz_devices(tmp_path), timeout=300)
    ok(r)
    for dev in ("blk", "rng", "balloon", "vsock"):
        assert re.search(rf"^fuzz: {transport} \S+ {dev} works after \d+ cases$", r.stdout, re.M), r.stdout
    assert re.search(r"^virtio-fuzz: \d+ cases on 4 devices, VMM alive$", r.stdout, re.M)
    assert "virtio-fuzz: PASS" in r.lines()
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fuzz_malformed_rings_set_needs_reset(boot, tmp_path, transport):
    # pyvirt's rule (DESIGN.md, "the guest is hostile"): a malformed ring puts
    # the device into its error state, which the driver sees as NEEDS_RESET
    r = boot("virtio-fuzz", "--memory", "64M", "--transport", transport, *_fuzz_devices(tmp_path),
             "--cmdline", "strict", timeout=300)
    ok(r)
    assert "virtio-fuzz: PASS" in r.lines()
