"""A vCPU runs from guest memory that is filled on demand through userfaultfd.

The probe behind post-copy migration and lazy restore: one memory slot over
an empty anonymous mapping registered in missing mode before the guest
runs; a tiny real-mode program exists only in the server's image, so the
guest can execute it only if KVM's accesses fault through the userfaultfd
and the server's UFFDIO_COPY reaches them. Works on kvm_pvm too (its
instruction emulator reads guest memory with ordinary user copies, which
fault the same way).

The vCPU runs in a thread (KVM_RUN releases the GIL) and this test's main
thread serves the faults; it never touches the registered memory until the
pages it reads are in.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import threading
import time

import pytest

from pyvirt import kvm
from pyvirt.kvm import exits
from pyvirt.memory import userfault as uf
from pyvirt.memory.userfault import PAGE_SIZE, PageFault, UserFault

from vmrun import kvm_usable

pytestmark = pytest.mark.skipif(kvm_usable() is not None, reason=str(kvm_usable()))

MEM_SIZE = 0x10000  # 64 KiB: the whole real-mode program's world
CODE, DATA, SCRATCH = 0x1000, 0x2000, 0x3000
PORT, MAGIC = 0x10, 0x5A
PROGRAM = bytes([
    0xA0, DATA & 0xFF, DATA >> 8,          # mov al, [DATA]     a read fault on the data page
    0xA2, SCRATCH & 0xFF, SCRATCH >> 8,    # mov [SCRATCH], al  a write fault on a third page
    0xE6, PORT,                            # out PORT, al
    0xF4,                                  # hlt
])
TSS_ADDR = 0xFFFBD000  # Intel without unrestricted guest runs real mode in vm86 and needs one
TIMEOUT = 30.0


def test_vcpu_faults_are_served_by_userfaultfd_copy():
    why = uf.available()
    if why:
        pytest.skip(why)
    image = bytearray(MEM_SIZE)
    image[CODE: CODE + len(PROGRAM)] = PROGRAM
    image[DATA] = MAGIC
    source = memoryview(image)

    mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    ref = ctypes.c_char.from_buffer(mem)
    host = ctypes.addressof(ref)
    del ref
    with kvm.Kvm() as k, UserFault() as u:
        vm = k.create_vm()
        try:
            vm.set_tss_addr(TSS_ADDR)
        except kvm.KvmError:
            pass  # not needed (or not offered) on this backend
        u.register(host, MEM_SIZE)
        vm.set_user_memory_region(0, 0, MEM_SIZE, host)
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()  # the reset state is real mode; move CS:IP to 0:CODE
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.ss):
            seg.base, seg.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = CODE, 0x2
        vcpu.set_regs(regs)

        seen: list[exits.Exit] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                for _ in range(4):
                    seen.append(vcpu.run())
                    if not isinstance(seen[-1], exits.IoOut):
                        return
            except BaseException as e:  # reported by the main thread
                failure.append(e)

        runner = threading.Thread(target=run, name="vcpu0", daemon=True)
        runner.start()
        served: dict[int, int] = {}  # guest-physical page -> fault flags
        deadline = time.monotonic() + TIMEOUT
        while runner.is_alive() and time.monotonic() < deadline:
            select.select([u], [], [], 0.05)
            for ev in u.read_events():
                if isinstance(ev, PageFault):
                    gpa = ev.page - host
                    served[gpa] = ev.flags
                    u.copy(ev.page, source[gpa: gpa + PAGE_SIZE])
        assert not runner.is_alive(), f"vCPU still in KVM_RUN after {TIMEOUT} s; faults served: {served}"
        assert not failure, f"KVM_RUN failed: {failure[0]!r}; faults served: {served}"

        assert seen and seen[0] == exits.IoOut(PORT, 1, bytes([MAGIC])), (seen, served)
        assert {CODE, DATA, SCRATCH} <= served.keys(), served
        assert mem[SCRATCH] == MAGIC  # the guest's write landed in the page the server installed
        vcpu.close()
        vm.close()
    mem.close()
