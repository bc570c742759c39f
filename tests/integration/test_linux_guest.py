"""Debian's own cloud kernel boots to a busybox /init under pyvirt (slow).

The guest is made from Debian packages by pyvirt.guestimage (cached in
~/.cache/pyvirt/debs, or $PYVIRT_CACHE). On kvm_pvm hosts the kernel's CPL0
code is emulated, so this takes minutes; it runs once in CI.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from vmrun import kvm_usable, run_pyvirt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable())),
    # Not yet reliable on kvm_pvm (the kernel stalls after its clocksource
    # switch; see the issue notes), so CI runs it only when asked to.
    pytest.mark.skipif(os.environ.get("PYVIRT_LINUX_TEST") != "1",
                       reason="set PYVIRT_LINUX_TEST=1 to boot Debian's kernel (minutes; unfinished on kvm_pvm)"),
]

# Kernel parameters that only save time where kernel code is emulated: no
# delay-loop calibration, watchdogs, crypto self-tests, certificate loading or
# trace-event enum rewriting (docs/pvm.md has the measurements).
FAST = ("nowatchdog cryptomgr.notests mitigations=off lpj=1000000 panic=-1 "
        "initcall_blacklist=trace_eval_init,load_system_certificate_list,init_trace_selftests")


@pytest.fixture(scope="module")
def linux_guest(tmp_path_factory):
    if not shutil.which("apt-get"):
        pytest.skip("needs apt-get to fetch Debian's kernel and busybox packages")
    from pyvirt.guestimage.debian import build_linux_guest

    # uncompressed: the kernel's own gunzip, emulated, takes minutes on kvm_pvm
    return build_linux_guest(tmp_path_factory.mktemp("linux"), compress=False)


def test_debian_kernel_reaches_userspace_and_powers_off(linux_guest):
    r = run_pyvirt(["run", "--kernel", str(linux_guest.kernel), "--initrd", str(linux_guest.initrd),
                    "--memory", "256M", "--cmdline", f"console=ttyS0 {FAST}"], timeout=600)
    out = r.stdout
    assert "PYVIRT-GUEST-UP" in out, out[-3000:] + r.stderr[-3000:]
    after = out.split("PYVIRT-GUEST-UP", 1)[1]
    assert linux_guest.kernel_release in after  # uname -r
    mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", after).group(1))
    assert 200 * 1024 < mem_kib <= 256 * 1024  # the guest sees about the 256 MiB it was given
    assert r.status == 0, f"status {r.status}; poweroff -f must end the VM with 0\n{r.stderr[-3000:]}"
