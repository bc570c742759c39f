"""Live migration end to end: two pyvirt processes, the guest kit's `dirty` guest.

The guest rewrites its memory at a chosen rate and, when asked over serial
(`v`), checks every word of its area against what it wrote: a page lost,
stale or torn by the migration fails that check. Each test starts the
destination (`pyvirt run --incoming`), the source with an API socket, runs
`pyvirt vm migrate`, and then asks the guest on the destination to verify.
One test runs the two "hosts" in network namespaces joined by a veth pair,
with a TAP for the guest's NIC on each side, and checks that the
destination announces the guest's MAC (RARP) on its TAP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from vmrun import GUESTS, ROOT, kvm_usable, pyvirt_cmd, socket_listening, wait_for

DIRTY = GUESTS / "dirty.elf"
pytestmark = [
    pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable())),
    pytest.mark.skipif(not DIRTY.exists(), reason="guest kit's dirty.elf not built (make -C guests)"),
]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
SECOND = re.compile(rb"dirty: second (\d+) written (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serial:
    """A guest's serial console on a unix socket."""

    def __init__(self, path: str) -> None:
        wait_for(f"serial socket {path}", lambda: socket_listening(path))
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(0.2)
        self.out = b""

    def read_until(self, pattern: bytes, timeout: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.out:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the serial console; got {self.out[-500:]!r}")
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise AssertionError(f"serial closed before {pattern!r}; got {self.out[-500:]!r}")
            self.out += data
        return self.out

    def verify(self) -> None:
        self.out = b""
        self.read_until(b"dirty: second")  # running
        self.out = b""
        self.sock.sendall(b"v")
        self.read_until(b"dirty: VERIFY", 60)
        while b"\n" not in self.out.split(b"dirty: VERIFY", 1)[1]:
            self._more()
        answer = self.out.split(b"dirty: VERIFY", 1)[1]
        assert answer.startswith(b" OK"), self.out[-500:]

    def _more(self) -> None:
        try:
            self.out += self.sock.recv(65536)
        except socket.timeout:
            pass

    def close(self) -> None:
        self.sock.close()


class Vms:
    """The processes one test starts; all killed at the end."""

    def __init__(self, tmp: Path, prefix: list[str] | None = None) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.prefix = prefix or []

    def start(self, args: list[str], prefix: list[str] | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"vm{len(self.procs)}.log", "wb")
        p = subprocess.Popen([*(prefix if prefix is not None else self.prefix), *pyvirt_cmd(), *args],
                             stdout=log, stderr=subprocess.STDOUT, env=dict(ENV, **(env or {})), cwd=ROOT)
        self.procs.append(p)
        return p

    def log(self, p: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"vm{self.procs.index(p)}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def vms(tmp_path: Path):
    v = Vms(tmp_path)
    yield v
    v.close()


def source(vms: Vms, tmp: Path, cmdline: str, extra: list[str] = (), prefix: list[str] | None = None,
           env: dict[str, str] | None = None):
    api = str(tmp / "src.api")
    p = vms.start(["run", "--kernel", str(DIRTY), "--memory", "256M", "--cmdline", cmdline,
                   "--serial", f"socket:{tmp / 'src.serial'}", "--api-socket", api, *extra], prefix, env)
    wait_for("the source's API socket", lambda: socket_listening(api))
    return p, api


def destination(vms: Vms, tmp: Path, port: int, host: str = "127.0.0.1", extra: list[str] = (),
                prefix: list[str] | None = None):
    p = vms.start(["run", "--incoming", f"tcp:{host}:{port}", "--serial", f"socket:{tmp / 'dst.serial'}", *extra],
                  prefix)
    wait_for("the destination to listen", lambda: b"waiting for an incoming migration" in
             (tmp / f"vm{vms.procs.index(p)}.log").read_bytes() or p.poll() is not None)
    assert p.poll() is None, vms.log(p)
    return p


def migrate(api: str, uri: str, *options: str, prefix: list[str] | None = None,
            timeout: float = 180) -> tuple[int, dict[str, object], str]:
    p = subprocess.run([*(prefix or []), *pyvirt_cmd(), "vm", "migrate", "--api-socket", api, uri, "-o", "json",
                        *options], capture_output=True, env=ENV, cwd=ROOT, timeout=timeout)
    out = p.stdout.decode()
    return p.returncode, json.loads(out) if out.strip().startswith("{") else {}, p.stderr.decode()


@pytest.mark.parametrize("tracking", ["ring", "bitmap"])
def test_precopy_with_a_disk_moves_the_running_guest(vms: Vms, tmp_path: Path, tracking: str) -> None:
    """50 MiB/s of dirtying: converges, the guest's memory verifies on the
    destination, the disk's lock moves with it, the source ends with 0;
    with KVM's dirty rings (where the host has them) and with the bitmap."""
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\xab" * (1 << 20))
    port = _free_port()
    dst = destination(vms, tmp_path, port)
    src, api = source(vms, tmp_path, "rate=50 pages=16384 spread", ["--disk", f"path={disk}"],
                      env={"PYVIRT_DIRTY_RING": "1" if tracking == "ring" else "0"})
    Serial(str(tmp_path / "src.serial")).read_until(b"dirty: second 1 ")
    status, result, err = migrate(api, f"tcp:127.0.0.1:{port}")
    assert status == 0, err
    assert result["state"] == "completed"
    if tracking == "bitmap" or _has_dirty_ring():
        assert result["dirty_tracking"] == tracking
    assert isinstance(result["downtime"], float) and result["downtime"] > 0
    assert result["transferred"] >= 64 << 20  # at least the guest's area
    assert src.wait(30) == 0, vms.log(src)
    assert "migrated to" in vms.log(src)
    serial = Serial(str(tmp_path / "dst.serial"))
    serial.verify()
    assert dst.poll() is None
    # The destination holds the disk's lock now.
    r = subprocess.run([*pyvirt_cmd(), "image", "info", str(disk)], capture_output=True, env=ENV, cwd=ROOT)
    assert r.returncode == 1 and b"holds a lock on it" in r.stderr, r.stderr
    serial.sock.sendall(b"q")
    assert dst.wait(30) == 1, vms.log(dst)  # the guest's exit(0) through the debug-exit port


def test_cut_stream_leaves_the_source_running(vms: Vms, tmp_path: Path) -> None:
    """The destination dies mid-way: the migration fails with a clear error,
    the source VM runs on and its memory still verifies."""
    port = _free_port()
    dst = destination(vms, tmp_path, port)
    src, api = source(vms, tmp_path, "rate=50 pages=16384 spread")
    serial = Serial(str(tmp_path / "src.serial"))
    serial.read_until(b"dirty: second 1 ")
    mig = subprocess.Popen([*pyvirt_cmd(), "vm", "migrate", "--api-socket", api, f"tcp:127.0.0.1:{port}", "-o",
                            "json", "--bandwidth", "20M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=ENV, cwd=ROOT)
    wait_for("the destination to receive some memory", lambda: _received(api) > 8 << 20)
    dst.kill()
    out, err = mig.communicate(timeout=120)
    assert mig.returncode == 1
    result = json.loads(out)
    assert result["state"] == "failed"
    assert "the VM runs on here" in result["error"], result["error"]
    assert src.poll() is None
    serial.verify()
    status = subprocess.run([*pyvirt_cmd(), "vm", "status", "--api-socket", api, "-o", "json"],
                            capture_output=True, env=ENV, cwd=ROOT)
    assert json.loads(status.stdout)["state"] == "running"


def _has_dirty_ring() -> bool:
    from pyvirt.kvm import Kvm, ioctls

    kvm = Kvm("/dev/kvm")
    try:
        return kvm.check_extension(ioctls.KVM_CAP_DIRTY_LOG_RING) >= 16 * 64
    finally:
        kvm.close()


def _received(api: str) -> int:
    r = subprocess.run([*pyvirt_cmd(), "vm", "stats", "--api-socket", api, "-o", "json"], capture_output=True,
                       env=ENV, cwd=ROOT)
    try:
        return int(json.loads(r.stdout)["migration"]["transferred"])
    except (ValueError, KeyError):
        return 0


def test_garbage_on_the_migration_port_is_refused(vms: Vms, tmp_path: Path) -> None:
    port = _free_port()
    dst = destination(vms, tmp_path, port)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64))
    assert dst.wait(30) == 1
    log = vms.log(dst)
    assert "not a pyvirt migration stream" in log and "the VM did not run here" in log, log


def test_postcopy_moves_a_guest_that_outruns_the_link(vms: Vms, tmp_path: Path) -> None:
    """The guest dirties 50 MiB/s over a 20 MiB/s link: pre-copy cannot
    converge, post-copy moves the VM and its pages follow on demand."""
    from pyvirt.memory.userfault import available

    if available() is not None:
        pytest.skip(f"userfaultfd: {available()}")
    port = _free_port()
    dst = destination(vms, tmp_path, port)
    src, api = source(vms, tmp_path, "rate=50 pages=16384 spread")
    Serial(str(tmp_path / "src.serial")).read_until(b"dirty: second 1 ")
    status, result, err = migrate(api, f"tcp:127.0.0.1:{port}", "--postcopy", "--bandwidth", "20M",
                                  "--no-auto-converge")
    assert status == 0, err
    assert result["state"] == "completed"
    assert src.wait(30) == 0
    serial = Serial(str(tmp_path / "dst.serial"))
    serial.verify()
    wait_for("post-copy to finish", lambda: "post-copy done" in vms.log(dst))
    assert "post-copy failed" not in vms.log(dst)


# --- two hosts made of network namespaces --------------------------------------------

@pytest.fixture
def hosts():
    """Namespaces A (10.77.0.1) and B (10.77.0.2) joined by a veth pair, each
    with a TAP "pvtap0" for the guest's NIC."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    tag = uuid.uuid4().hex[:6]
    a, b = f"pvmigA{tag}", f"pvmigB{tag}"
    made = []
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        subprocess.run(["ip", "link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name", f"vb{tag}",
                        "netns", b], check=True)
        for ns, dev, addr in ((a, f"va{tag}", "10.77.0.1/24"), (b, f"vb{tag}", "10.77.0.2/24")):
            ex = ["ip", "netns", "exec", ns]
            subprocess.run([*ex, "ip", "addr", "add", addr, "dev", dev], check=True)
            subprocess.run([*ex, "ip", "link", "set", dev, "up"], check=True)
            subprocess.run([*ex, "ip", "link", "set", "lo", "up"], check=True)
            subprocess.run([*ex, "ip", "tuntap", "add", "dev", "pvtap0", "mode", "tap", "vnet_hdr"], check=True)
            subprocess.run([*ex, "ip", "link", "set", "pvtap0", "up"], check=True)
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_migration_between_namespace_hosts_announces_the_mac(vms: Vms, tmp_path: Path, hosts) -> None:
    a, b = hosts
    in_a, in_b = ["ip", "netns", "exec", a], ["ip", "netns", "exec", b]
    mac = "52:54:00:12:34:56"
    port = 4444
    dst = destination(vms, tmp_path, port, host="10.77.0.2", extra=["--net", "tap=pvtap0"], prefix=in_b)
    # Capture on B's TAP: the RARP the destination sends after switchover.
    capture = subprocess.Popen([*in_b, sys_python(), "-c", CAPTURE, "pvtap0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    src, api = source(vms, tmp_path, "rate=50 pages=16384 spread", ["--net", f"tap=pvtap0,mac={mac}"], prefix=in_a)
    Serial(str(tmp_path / "src.serial")).read_until(b"dirty: second 1 ")
    status, result, err = migrate(api, f"tcp:10.77.0.2:{port}", prefix=in_a)
    assert status == 0, err
    assert result["state"] == "completed"
    assert src.wait(30) == 0
    Serial(str(tmp_path / "dst.serial")).verify()
    out, err2 = capture.communicate(timeout=30)
    assert out.decode().strip() == mac.replace(":", ""), err2.decode()
    assert dst.poll() is None


def sys_python() -> str:
    import sys

    return sys.executable


# Prints the sender MAC of the first RARP frame seen on the interface (or fails after 20 s).
CAPTURE = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))
s.bind((sys.argv[1], 0))
s.settimeout(20)
frame = s.recv(2048)
assert frame[12:14] == b"\x80\x35" and frame[20:22] == b"\x00\x03", frame
print(frame[6:12].hex())
"""


def test_copy_disks_for_hosts_without_shared_storage(vms: Vms, tmp_path: Path) -> None:
    """--copy-disks: the destination creates its own copy at its --disk path
    and gets the disk's bytes (zero chunks stay holes); an existing file is
    never overwritten."""
    disk = tmp_path / "src.raw"
    data = os.urandom(3 << 20) + bytes(4 << 20) + os.urandom(1 << 20) + b"tail"
    disk.write_bytes(data + bytes(-len(data) % 512))
    copy = tmp_path / "copy.raw"
    port = _free_port()
    dst = destination(vms, tmp_path, port, extra=["--disk", f"path={copy}"])
    src, api = source(vms, tmp_path, "rate=10 pages=4096 spread", ["--disk", f"path={disk}"])
    Serial(str(tmp_path / "src.serial")).read_until(b"dirty: second 1 ")
    status, result, err = migrate(api, f"tcp:127.0.0.1:{port}", "--copy-disks")
    assert status == 0, err
    assert src.wait(30) == 0
    Serial(str(tmp_path / "dst.serial")).verify()
    assert copy.read_bytes() == disk.read_bytes()
    assert os.stat(copy).st_blocks * 512 < os.stat(disk).st_size  # the zero chunks were not written
    # A second copy onto an existing file is refused, and the source runs on.
    port2 = _free_port()
    dst2 = destination(vms, tmp_path, port2, extra=["--disk", f"path={copy}"])
    src2, api2 = source(vms, tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path,
                        "rate=10 pages=4096 spread", ["--disk", f"path={disk}"])
    status, result, err = migrate(api2, f"tcp:127.0.0.1:{port2}", "--copy-disks")
    assert status == 1 and "exists" in result["error"], result
    assert dst2.wait(30) == 1
    assert src2.poll() is None


def test_a_source_killed_mid_way_leaves_the_destination_clean(vms: Vms, tmp_path: Path) -> None:
    """The source dies during pre-copy: the destination says so and exits 1
    without having run the guest."""
    port = _free_port()
    dst = destination(vms, tmp_path, port)
    src, api = source(vms, tmp_path, "rate=50 pages=16384 spread")
    Serial(str(tmp_path / "src.serial")).read_until(b"dirty: second 1 ")
    mig = subprocess.Popen([*pyvirt_cmd(), "vm", "migrate", "--api-socket", api, f"tcp:127.0.0.1:{port}",
                            "--bandwidth", "20M", "--detach"], env=ENV, cwd=ROOT)
    assert mig.wait(30) == 0
    wait_for("some memory to go over", lambda: _received(api) > 8 << 20)
    src.kill()
    assert dst.wait(60) == 1
    log = vms.log(dst)
    assert "the connection was closed" in log and "the VM did not run here" in log, log
