"""Kernel-module metadata: .modinfo parsing, load order, modules.dep and modules.alias."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from pyvirt.guestimage.errors import ModuleError
from pyvirt.guestimage.kmod import (ModuleIndex, elf_section, module_info, module_name, modules_alias,
                                    modules_dep, parse_modinfo)
from pyvirt.guestimage.testing import make_module

# A small slice of a real kernel's module graph (Debian 6.1 cloud).
TREE = {
    "kernel/drivers/virtio/virtio_ring.ko": make_module("virtio_ring"),
    "kernel/drivers/virtio/virtio.ko": make_module("virtio", ["virtio_ring"]),
    "kernel/drivers/block/virtio_blk.ko": make_module("virtio_blk", ["virtio", "virtio_ring"],
                                                      ["virtio:d00000002v*"]),
    "kernel/net/core/failover.ko": make_module("failover"),
    "kernel/drivers/net/net_failover.ko": make_module("net_failover", ["failover"]),
    "kernel/drivers/net/virtio_net.ko.xz": lzma.compress(
        make_module("virtio_net", ["net_failover", "virtio", "virtio_ring"], ["virtio:d00000001v*"]),
        check=lzma.CHECK_CRC32),
    "kernel/drivers/char/hw_random/virtio-rng.ko.gz": gzip.compress(
        make_module("virtio_rng", ["virtio", "virtio_ring"], softdep="pre: rng_core post: nothing")),
    "kernel/drivers/char/hw_random/rng-core.ko": make_module("rng_core"),
}


def index(tree: dict[str, bytes] = TREE, builtin: tuple[str, ...] = ("kernel/fs/ext4/ext4.ko",)) -> ModuleIndex:
    return ModuleIndex(tree, tree.__getitem__, builtin)


def test_module_name() -> None:
    assert module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio_rng"
    assert module_name("a/b.ko") == "b"


def test_module_info_from_elf() -> None:
    mod = module_info("x/virtio_blk.ko", TREE["kernel/drivers/block/virtio_blk.ko"])
    assert (mod.name, mod.depends, mod.aliases) == ("virtio_blk", ("virtio", "virtio_ring"), ("virtio:d00000002v*",))
    rng = module_info("x/virtio-rng.ko.gz", TREE["kernel/drivers/char/hw_random/virtio-rng.ko.gz"])
    assert rng.softdep_pre == ("rng_core",)
    assert parse_modinfo(b"a=1\0a=2\0junk\0b=\0") == {"a": ["1", "2"], "b": [""]}


def test_load_order_puts_dependencies_first() -> None:
    order, builtin = index().resolve(["virtio_net", "virtio-blk", "virtio_rng", "ext4"])
    names = [m.name for m in order]
    assert names == ["failover", "net_failover", "virtio_ring", "virtio", "virtio_net", "virtio_blk",
                     "rng_core", "virtio_rng"]
    assert builtin == ["ext4"]
    for i, m in enumerate(order):
        assert set(m.depends) <= set(names[:i])


def test_modules_dep_lists_the_closure_last_loaded_first() -> None:
    idx = index()
    order, _ = idx.resolve(["virtio_net"])
    dep = modules_dep(idx, order).splitlines()
    assert "kernel/net/core/failover.ko:" in dep
    line = next(ln for ln in dep if ln.startswith("kernel/drivers/net/virtio_net.ko.xz:"))
    listed = line.split(":")[1].split()
    assert set(listed) == {"kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko",
                           "kernel/drivers/virtio/virtio.ko", "kernel/drivers/virtio/virtio_ring.ko"}
    # modprobe loads the list from its end: every module after its dependencies.
    loading = list(reversed(listed))
    assert loading.index("kernel/net/core/failover.ko") < loading.index("kernel/drivers/net/net_failover.ko")
    assert loading.index("kernel/drivers/virtio/virtio_ring.ko") < loading.index("kernel/drivers/virtio/virtio.ko")
    assert modules_alias(order) == "alias virtio:d00000001v* virtio_net\n"


def test_missing_and_cyclic_modules() -> None:
    with pytest.raises(ModuleError, match="'virtio_bkl' is not in this kernel's package; did you mean virtio_blk"):
        index().resolve(["virtio_bkl"])
    tree = {"a.ko": make_module("a", ["b"]), "b.ko": make_module("b", ["a"])}
    with pytest.raises(ModuleError, match="cycle: a -> b -> a"):
        index(tree).resolve(["a"])
    broken = {"a.ko": make_module("a", ["gone"])}
    with pytest.raises(ModuleError, match="'gone'"):
        index(broken).resolve(["a"])


def test_from_dir(tmp_path: Path) -> None:
    for rel, data in TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    idx = ModuleIndex.from_dir(tmp_path)
    assert "virtio-rng" in idx and "ext4" in idx.builtin and len(idx.names) == len(TREE)


def test_corrupt_modules() -> None:
    good = TREE["kernel/drivers/virtio/virtio.ko"]
    with pytest.raises(ModuleError, match="not an ELF"):
        module_info("x.ko", b"MZ" + good[2:])
    bad = bytearray(good)
    struct.pack_into("<Q", bad, 0x28, 1 << 40)  # e_shoff far past the end
    with pytest.raises(ModuleError, match="outside the file"):
        module_info("x.ko", bytes(bad))
    with pytest.raises(ModuleError, match="compressed module is corrupt"):
        module_info("x.ko.xz", lzma.compress(good)[:-8])
    assert elf_section(good, ".nothing") is None
    no_modinfo = bytearray(good)
    no_modinfo[good.index(b".modinfo")] = ord("_")
    with pytest.raises(ModuleError, match="no .modinfo"):
        module_info("x.ko", bytes(no_modinfo))
