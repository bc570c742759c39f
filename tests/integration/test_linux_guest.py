"""Debian's own cloud kernel boots to a busybox /init under pyvirt (slow).

One boot serves every test here: the guest has a virtio-pci disk and NIC,
its /init prints a marker, `uname -r`, MemTotal and `nproc`, loads the
virtio modules from the initramfs, prints a checksum of /dev/vda and eth0's
MAC, and powers off. The guest is made from Debian packages by
pyvirt.guestimage (cached in ~/.cache/pyvirt/debs, or $PYVIRT_CACHE). On
kvm_pvm hosts the kernel's CPL0 code is emulated, so the boot takes minutes;
it runs once in CI.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest
from vmrun import kvm_usable, run_pyvirt

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable())),
    pytest.mark.skipif(os.environ.get("PYVIRT_LINUX_TEST") == "0", reason="PYVIRT_LINUX_TEST=0"),
]

# Kernel parameters that only save time where kernel code is emulated: no
# delay-loop calibration, watchdogs, crypto self-tests, certificate loading or
# trace-event enum rewriting (docs/pvm.md has the measurements).
FAST = ("nowatchdog cryptomgr.notests mitigations=off lpj=1000000 panic=-1 "
        "initcall_blacklist=trace_eval_init,load_system_certificate_list,init_trace_selftests")
MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
MAC = "52:54:00:9a:7e:01"

INIT = b"""#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo PYVIRT-GUEST-UP
uname -r
grep MemTotal /proc/meminfo
nproc
while read -r mod; do
    insmod "/lib/modules/$(uname -r)/$mod" || echo "init: insmod $mod failed"
done < /etc/pyvirt/modules
echo "VDA-SUM $(head -c 1048576 /dev/vda | sha256sum)"
echo "ETH0-MAC $(cat /sys/class/net/eth0/address)"
poweroff -f
"""


@pytest.fixture(scope="module")
def linux_guest(tmp_path_factory):
    if not shutil.which("apt-get"):
        pytest.skip("needs apt-get to fetch Debian's kernel and busybox packages")
    from pyvirt.guestimage.debian import build_linux_guest

    # uncompressed: the kernel's own gunzip, emulated, takes minutes on kvm_pvm
    return build_linux_guest(tmp_path_factory.mktemp("linux"), init=INIT, modules=MODULES, compress=False)


@pytest.fixture(scope="module")
def booted(linux_guest, tmp_path_factory):
    disk = tmp_path_factory.mktemp("disk") / "disk.img"
    data = os.urandom(1 << 20)
    disk.write_bytes(data)
    os.truncate(disk, 8 << 20)
    tap = f"pvlx{os.getpid() % 100000}"
    r = run_pyvirt(["run", "--kernel", str(linux_guest.kernel), "--initrd", str(linux_guest.initrd),
                    "--memory", "256M", "--disk", f"path={disk}", "--net", f"tap={tap},mac={MAC}",
                    "--cmdline", f"console=ttyS0 {FAST}"], timeout=900)
    assert not os.path.exists(f"/sys/class/net/{tap}"), "pyvirt created the TAP and must remove it"
    return r, hashlib.sha256(data).hexdigest()


def test_debian_kernel_reaches_userspace_and_powers_off(linux_guest, booted):
    r, _ = booted
    out = r.stdout
    assert "PYVIRT-GUEST-UP" in out, out[-3000:] + r.stderr[-3000:]
    after = out.split("PYVIRT-GUEST-UP", 1)[1]
    assert linux_guest.kernel_release in after  # uname -r
    mem_kib = int(re.search(r"MemTotal:\s+(\d+) kB", after).group(1))
    assert 200 * 1024 < mem_kib <= 256 * 1024  # the guest sees about the 256 MiB it was given
    assert r.status == 0, f"status {r.status}; poweroff -f must end the VM with 0\n{r.stderr[-3000:]}"


def test_linux_virtio_drivers_find_pyvirt_disk_and_nic(booted):
    r, digest = booted
    m = re.search(r"VDA-SUM ([0-9a-f]{64})", r.stdout)
    assert m, r.stdout[-3000:]
    assert m.group(1) == digest  # Linux read the host file's bytes through virtio-blk
    m = re.search(r"ETH0-MAC (\S+)", r.stdout)
    assert m and m.group(1) == MAC, r.stdout[-3000:]
