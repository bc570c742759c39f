"""How a VM ends: debug-exit, triple fault, signals, Ctrl-A x, and bad input."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from pyvirt.testing import images

from vmrun import ROOT, kvm_usable, run_pyvirt

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))


@pytest.fixture
def image(tmp_path):
    def _image(code: bytes, name: str = "guest.elf") -> str:
        p = tmp_path / name
        p.write_bytes(images.pvh_elf(code))
        return str(p)

    return _image


def test_debug_exit_status_like_qemu(image):
    r = run_pyvirt(["run", "--kernel", image(images.print_then_exit(b"hi\n", 0x10)), "--serial", "stdio"])
    assert r.status == 0x21, r.stderr
    assert r.stdout == "hi\n"


def test_serial_to_file(image, tmp_path):
    out = tmp_path / "console.log"
    r = run_pyvirt(["run", "--kernel", image(images.print_then_exit(b"to a file", 0)), "--serial", f"file:{out}"])
    assert r.status == 1 and r.stdout == ""
    assert out.read_bytes() == b"to a file"


def test_config_file(image, tmp_path):
    cfg = tmp_path / "vm.json"
    cfg.write_text('{"kernel": "%s", "memory": "64M", "cpus": 2, "serial": "stdio"}'
                   % image(images.print_then_exit(b"cfg", 3)))
    r = run_pyvirt(["run", "--config", str(cfg)])
    assert (r.status, r.stdout) == (7, "cfg")


def test_triple_fault_or_emulation_failure_is_reported(image):
    # #DE with an empty IDT is a triple fault on VT-x/AMD-V hosts.
    r = run_pyvirt(["run", "--kernel", image(images.DIVIDE_ERROR)])
    assert r.status in (34, 36), r.stderr
    assert "RIP=" in r.stderr and "code at RIP:" in r.stderr


def test_ud2_gets_a_register_report(image):
    r = run_pyvirt(["run", "--kernel", image(images.UD2)])
    assert r.status in (34, 36), r.stderr
    assert "RIP=0000000000100000" in r.stderr
    assert "0f 0b" in r.stderr  # the instruction bytes at RIP


def _spawn(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "pyvirt", *args], env=env, **kw)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(image, sig):
    p = _spawn(["run", "--kernel", image(images.print_then_hang(b"up\n")), "--serial", "stdio"],
               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.read(3) == b"up\n"  # the guest is running
        p.send_signal(sig)
        assert p.wait(timeout=20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ctrl_a_x_quits_and_restores_terminal(image):
    code = images.print_then_hang(b"ready\n")
    master, slave = pty.openpty()
    import termios

    before = termios.tcgetattr(slave)
    p = _spawn(["run", "--kernel", image(code)], stdin=slave, stdout=slave, stderr=subprocess.PIPE)
    try:
        buf = b""
        deadline = time.monotonic() + 20
        while b"ready" not in buf and time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                buf += os.read(master, 1024)
        assert b"ready" in buf
        os.write(master, b"\x01x")
        assert p.wait(timeout=20) == 0
        assert termios.tcgetattr(slave) == before  # raw mode undone
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        os.close(slave)


def test_not_a_kernel(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a kernel\n" * 100)
    r = run_pyvirt(["run", "--kernel", str(bad)])
    assert r.status == 1
    assert "not a kernel" in r.stderr and "bzImage" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--memory", "100T"], "lower --memory"),
    (["--memory", "65537k"], "multiple of the 4 KiB"),
    (["--cpus", "100000"], "cpus"),
    (["--kernel", "/nonexistent/kernel"], "does not exist"),
])
def test_bad_settings(image, args, message):
    r = run_pyvirt(["run", "--kernel", image(images.exit_with(0)), *args])
    assert r.status == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_too_many_vcpus_for_kvm(image):
    from pyvirt.kvm import Kvm

    with Kvm() as k:
        n = k.max_vcpus() + 1
    r = run_pyvirt(["run", "--kernel", image(images.exit_with(0)), "--cpus", str(n)])
    assert r.status == 1 and "at most" in r.stderr


def test_initrd_that_does_not_fit(image, tmp_path):
    big = tmp_path / "initrd"
    with open(big, "wb") as f:
        f.truncate(40 << 20)
    r = run_pyvirt(["run", "--kernel", image(images.exit_with(0)), "--memory", "32M", "--initrd", str(big)])
    assert r.status == 1 and "initrd" in r.stderr and "Traceback" not in r.stderr


def test_no_kvm_device(image):
    env_path = "/nonexistent/kvm"
    r = subprocess.run([sys.executable, "-m", "pyvirt", "run", "--kernel", image(images.exit_with(0))],
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), PYVIRT_KVM_DEVICE=env_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "modprobe kvm_intel" in r.stderr


def test_stdin_reaches_the_guest_uart(image):
    r = run_pyvirt(["run", "--kernel", image(images.ECHO_UNTIL_Q)], input=b"abc q")
    assert (r.status, r.stdout) == (1, "abc q")


def test_serial_socket_is_interactive(image, tmp_path):
    import socket

    path = tmp_path / "console.sock"
    p = _spawn(["run", "--kernel", image(images.ECHO_UNTIL_Q), "--serial", f"socket:{path}"],
               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.settimeout(20)
        got = b""
        for i, ch in enumerate(b"hello"):  # one at a time: the guest echoes each byte as it arrives
            s.sendall(bytes([ch]))
            while len(got) <= i:
                got += s.recv(16)
        s.sendall(b"q")
        assert got == b"hello"
        assert p.wait(timeout=20) == 1
        s.close()
        assert not path.exists()  # the socket is removed on exit
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_keyboard_controller_reset_ends_the_vm(image):
    r = run_pyvirt(["run", "--kernel", image(bytes.fromhex("b0fe e664") + images.HANG)])  # out 0x64, 0xfe
    assert r.status == 32, r.stderr


def test_acpi_s5_powers_off(image):
    # PM1a_CNT (0x604) <- SLP_TYP 5 | SLP_EN, as the DSDT's \_S5 tells an OS to write
    code = bytes.fromhex("66ba0406") + bytes.fromhex("66b8") + ((5 << 10) | (1 << 13)).to_bytes(2, "little")
    r = run_pyvirt(["run", "--kernel", image(code + bytes.fromhex("66ef") + images.HANG)])  # out dx, ax
    assert r.status == 0, r.stderr


def test_port_0xcf9_reset(image):
    r = run_pyvirt(["run", "--kernel", image(bytes.fromhex("66baf90c b006 ee") + images.HANG)])
    assert r.status == 32, r.stderr
