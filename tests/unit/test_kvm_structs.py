"""The ctypes mirrors must match the kernel ABI byte for byte.

Expected sizes are those of the C structs in <linux/kvm.h> on x86-64 (and
are re-checked against the installed headers when a C compiler is present).
"""

import ctypes
import shutil
import subprocess

import pytest

from pyvirt.kvm import ioctls as k
from pyvirt.kvm import structs as s

SIZES = {
    "kvm_regs": 144, "kvm_sregs": 312, "kvm_fpu": 416, "kvm_cpuid_entry2": 40, "kvm_cpuid2": 8,
    "kvm_msr_entry": 16, "kvm_msr_list": 4, "kvm_lapic_state": 1024, "kvm_irqchip": 520,
    "kvm_pit_config": 64, "kvm_pit_state2": 112, "kvm_reinject_control": 32, "kvm_mp_state": 4,
    "kvm_vcpu_events": 64, "kvm_debugregs": 128, "kvm_xsave": 4096, "kvm_xcrs": 392,
    "kvm_clock_data": 48, "kvm_userspace_memory_region": 32, "kvm_irq_level": 8, "kvm_irqfd": 32,
    "kvm_ioeventfd": 64, "kvm_enable_cap": 104, "kvm_dirty_log": 16, "kvm_msi": 32,
    "kvm_irq_routing_entry": 48, "kvm_translation": 24, "kvm_interrupt": 4,
}


@pytest.mark.parametrize("name,size", sorted(SIZES.items()))
def test_struct_sizes(name, size):
    assert ctypes.sizeof(getattr(s, name)) == size


def test_ioctl_numbers_match_kernel_encoding():
    # Values as the kernel headers compute them (_IOR/_IOW/_IOWR of the struct sizes).
    assert k.KVM_RUN == 0xAE80
    assert k.KVM_GET_SREGS == 0x8138AE83
    assert k.KVM_SET_CPUID2 == 0x4008AE90
    assert k.KVM_GET_SUPPORTED_CPUID == 0xC008AE05
    assert k.KVM_CREATE_PIT2 == 0x4040AE77
    assert k.KVM_SET_USER_MEMORY_REGION == 0x4020AE46
    assert k.KVM_GET_MSRS == 0xC008AE88
    assert k.KVM_REINJECT_CONTROL == 0xAE71
    assert k.KVM_GET_XCRS == 0x8188AEA6
    assert k.KVM_GET_PIT2 == 0x8070AE9F
    assert k.KVM_GET_XSAVE2 == 0x9000AECF
    assert k.KVM_GET_CPUID2 == 0xC008AE91
    assert k.KVM_GET_TSC_KHZ == 0xAEA3 and k.KVM_KVMCLOCK_CTRL == 0xAEAD


@pytest.mark.skipif(not shutil.which("gcc"), reason="no C compiler to read the kernel headers")
def test_sizes_against_installed_headers(tmp_path):
    src = tmp_path / "sizes.c"
    body = "".join(f'printf("{n} %zu\\n", sizeof(struct {n}));' for n in SIZES)
    src.write_text("#include <stdio.h>\n#include <linux/kvm.h>\nint main(void){" + body + "return 0;}\n")
    exe = tmp_path / "sizes"
    r = subprocess.run(["gcc", "-o", str(exe), str(src)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("kernel headers (linux-libc-dev) not installed")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        name, size = line.split()
        assert ctypes.sizeof(getattr(s, name)) == int(size), name
