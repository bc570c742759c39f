"""`pyvirt host check`: every line is PASS/WARN/FAIL/INFO with advice, FAIL sets the exit status."""

import os

from pyvirt.cli.main import main
from pyvirt.vmm import host_check


def test_missing_device_fails_with_advice(tmp_path):
    checks = host_check.run_checks(str(tmp_path / "kvm"))
    first = checks[0]
    assert first.result == "FAIL" and "modprobe kvm_intel" in first.detail
    # the rest of the host is still described
    assert {c.name for c in checks} >= {"/dev/net/tun", "cgroups", "hugepages"}


def test_not_a_kvm_device_fails(tmp_path):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    checks = host_check.run_checks(str(fake))
    assert any(c.result == "FAIL" and c.name == "KVM API version" for c in checks)


def test_every_line_has_a_known_result():
    for c in host_check.run_checks():
        assert c.result in ("PASS", "WARN", "FAIL", "INFO")
        assert c.detail


def test_cli_prints_one_line_per_check(capsys):
    status = main(["host", "check"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(host_check.run_checks())
    assert all(" : " in line for line in out)
    usable = os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
    assert status == (0 if usable else 1)
