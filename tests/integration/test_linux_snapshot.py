"""A Linux guest saved at its shell and restored counts on (slow).

Debian's cloud kernel boots to a busybox /init that prints a counter and
the guest's uptime once a second. The VM is saved (it stops), restored from
the file, and must print the next count, with uptime going on from where it
was: kvmclock, the timers, interrupts, system calls (on kvm_pvm, through the
restored SYSCALL fix-up) and every page the kernel had all came back.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from test_linux_guest import FAST
from test_snapshot import Proc
from vmrun import kvm_usable, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable())),
    # A second Linux boot of several minutes would push `make test` past its
    # 20-minute budget on a kvm_pvm host: run it on request.
    pytest.mark.skipif(os.environ.get("PYVIRT_LINUX_SNAPSHOT_TEST") != "1",
                       reason="set PYVIRT_LINUX_SNAPSHOT_TEST=1 to snapshot and restore a Debian guest (minutes)"),
]

INIT = b"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
echo PYVIRT-GUEST-UP
i=0
while true; do i=$((i+1)); echo "COUNT $i $(cut -d' ' -f1 /proc/uptime)"; sleep 1; done
"""
COUNT = re.compile(rb"COUNT (\d+) ([\d.]+)\r?\n")
BOOT = 1500.0  # seconds: on kvm_pvm the kernel's code is emulated


def test_linux_counts_on_after_save_and_restore(tmp_path: Path) -> None:
    if not shutil.which("apt-get"):
        pytest.skip("needs apt-get to fetch Debian's kernel and busybox packages")
    from pyvirt.guestimage.debian import build_linux_guest

    guest = build_linux_guest(tmp_path / "img", init=INIT, modules=(), compress=False)
    vm = Proc(tmp_path, "run", "run", "--kernel", str(guest.kernel), "--initrd", str(guest.initrd),
              "--memory", "256M", "--cmdline", f"console=ttyS0 {FAST}")
    restored = None
    try:
        wait_for("the counter", lambda: len(COUNT.findall(vm.output())) >= 2, timeout=BOOT)
        reply = vm.vm("save", str(tmp_path / "linux.save"))
        assert reply["state"] == "stopped" and reply["memory_pages"] > 1000
        assert vm.wait() == 0
        last, uptime = COUNT.findall(vm.output())[-1]
        start = time.monotonic()
        restored = Proc(tmp_path, "restored", "restore", str(tmp_path / "linux.save"))
        wait_for("the next count", lambda: len(COUNT.findall(restored.output())) >= 2, timeout=600)
        counts = COUNT.findall(restored.output())
        assert int(counts[0][0]) == int(last) + 1, (last, counts)
        assert float(uptime) < float(counts[0][1]) < float(uptime) + 30  # the clock went on, not from 0
        assert b"PYVIRT-GUEST-UP" not in restored.output()  # no new boot
        assert restored.vm("stop")["state"] == "stopped"
        assert restored.wait() == 0
        print(f"first count {time.monotonic() - start:.1f} s after the restore started")
    finally:
        vm.close()
        if restored is not None:
            restored.close()
