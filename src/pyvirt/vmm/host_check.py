"""`pyvirt host check`: can this host run VMs, and how well?

Like virt-host-validate: one line per check, PASS / WARN / FAIL, and for
anything short of PASS, what to do about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import kvm
from ..kvm import ioctls as k


@dataclass(frozen=True)
class Check:
    name: str
    result: str  # PASS | WARN | FAIL | INFO
    detail: str


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_vendor() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def run_checks(dev: str = "/dev/kvm") -> list[Check]:
    out: list[Check] = []
    if not os.path.exists(dev):
        out.append(Check("/dev/kvm exists", "FAIL",
                         "no /dev/kvm: modprobe kvm_intel (or kvm_amd) and enable VT-x/AMD-V in the firmware"))
        return out + _other_checks()
    out.append(Check("/dev/kvm exists", "PASS", dev))
    if not os.access(dev, os.R_OK | os.W_OK):
        out.append(Check("/dev/kvm is writable", "FAIL", "run as root or add your user to the 'kvm' group"))
        return out + _other_checks()
    out.append(Check("/dev/kvm is writable", "PASS", "read/write access"))
    try:
        h = kvm.Kvm(dev)
    except kvm.KvmError as e:
        out.append(Check("KVM API version", "FAIL", str(e)))
        return out + _other_checks()
    with h:
        out.append(Check("KVM API version", "PASS", str(h.api_version())))
        required = {
            "in-kernel irqchip": k.KVM_CAP_IRQCHIP,
            "user memory": k.KVM_CAP_USER_MEMORY,
            "PIT2": k.KVM_CAP_PIT2,
            "MP state": k.KVM_CAP_MP_STATE,
            "irqfd": k.KVM_CAP_IRQFD,
            "ioeventfd": k.KVM_CAP_IOEVENTFD,
            "PIT re-injection control": k.KVM_CAP_REINJECT_CONTROL,
            "immediate exit": k.KVM_CAP_IMMEDIATE_EXIT,
        }
        missing = [n for n, cap in required.items() if not h.check_extension(cap)]
        out.append(Check("required capabilities", "FAIL" if missing else "PASS",
                         ("missing: " + ", ".join(missing) + "; a newer host kernel is needed") if missing
                         else ", ".join(required)))
        out.append(Check("maximum vCPUs", "INFO", str(h.max_vcpus())))
        out.append(Check("memory slots", "INFO", str(h.check_extension(k.KVM_CAP_NR_MEMSLOTS))))
    out.append(Check("CPU vendor", "INFO", cpu_vendor()))
    backend = kvm.backend()
    if backend == "kvm_pvm":
        out.append(Check("KVM backend", "WARN",
                         "kvm_pvm (nested, paravirtual): guest kernel code is emulated; pyvirt enables its PVM "
                         "compatibility layer; run speed-sensitive guest code at CPL3"))
    elif backend == "unknown":
        out.append(Check("KVM backend", "WARN", "could not tell which module provides /dev/kvm"))
    else:
        out.append(Check("KVM backend", "PASS", backend))
    return out + _other_checks()


def _other_checks() -> list[Check]:
    out = []
    if os.path.exists("/dev/net/tun"):
        out.append(Check("/dev/net/tun", "PASS", "TAP networking available"))
    else:
        out.append(Check("/dev/net/tun", "WARN", "no TAP devices: modprobe tun for VM networking"))
    out.append(Check("/dev/vhost-net", "PASS" if os.path.exists("/dev/vhost-net") else "WARN",
                     "present" if os.path.exists("/dev/vhost-net")
                     else "absent: networking runs in user space (modprobe vhost_net for in-kernel)"))
    out.append(_cgroup_check())
    hp = _read("/proc/sys/vm/nr_hugepages")
    if hp and int(hp) > 0:
        out.append(Check("hugepages", "PASS", f"{hp} reserved"))
    else:
        out.append(Check("hugepages", "WARN", "none reserved: echo N > /proc/sys/vm/nr_hugepages to back guests with them"))
    return out


def _cgroup_check() -> Check:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return Check("cgroups", "PASS", "v2 (unified) at /sys/fs/cgroup")
    v1 = [c for c in ("cpu", "cpuset", "memory") if os.path.isdir(f"/sys/fs/cgroup/{c}")]
    unified = os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers")
    if v1:
        extra = " and v2 at /sys/fs/cgroup/unified" if unified else ""
        return Check("cgroups", "PASS", f"v1 controllers {', '.join(v1)}{extra}")
    if unified:
        return Check("cgroups", "WARN", "only v2 at /sys/fs/cgroup/unified")
    return Check("cgroups", "WARN", "no cgroup hierarchy mounted: resource limits unavailable")
