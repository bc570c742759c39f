"""The vCPU exit handler, driven with made-up exits and a fake vCPU."""

from pyvirt.devices.bus import Bus
from pyvirt.kvm import exits
from pyvirt.vmm import exit_status
from pyvirt.vmm.vcpu_loop import ExitHandler


class FakeVcpu:
    index = 0

    def __init__(self):
        self.io_in = []
        self.mmio_in = []

    def complete_io_in(self, e, data):
        self.io_in.append(data)

    def complete_mmio_read(self, data):
        self.mmio_in.append(data)


class Reg:
    def __init__(self, value=0):
        self.value = value
        self.writes = []

    def read(self, offset, size):
        return self.value

    def write(self, offset, size, value):
        self.writes.append((offset, size, value))


class Broken:
    def read(self, offset, size):
        raise RuntimeError("model bug")

    def write(self, offset, size, value):
        raise RuntimeError("model bug")


def make():
    pio, mmio, stops = Bus("pio"), Bus("mmio"), []
    return pio, mmio, stops, ExitHandler(pio, mmio, lambda status, reason, idx=None: stops.append((status, reason)))


def test_port_out_and_rep_out():
    pio, _, _, h = make()
    r = Reg()
    pio.register(0x3F8, 8, r)
    h.handle(FakeVcpu(), exits.IoOut(0x3F8, 1, b"A"))
    h.handle(FakeVcpu(), exits.IoOut(0x3F8, 2, b"\x01\x02\x03\x04"))  # REP OUTSW, 2 words
    assert r.writes == [(0, 1, 0x41), (0, 2, 0x0201), (0, 2, 0x0403)]


def test_port_in_fills_every_repetition():
    pio, _, _, h = make()
    pio.register(0x70, 2, Reg(0x1234))
    v = FakeVcpu()
    h.handle(v, exits.IoIn(0x70, 2, 3, 0x1000))
    assert v.io_in == [b"\x34\x12" * 3]
    h.handle(v, exits.IoIn(0x9999, 4, 1, 0x1000))
    assert v.io_in[-1] == b"\xff" * 4


def test_mmio_dispatch():
    _, mmio, _, h = make()
    r = Reg(0xAABBCCDD)
    mmio.register(0xD0000000, 0x1000, r)
    v = FakeVcpu()
    h.handle(v, exits.MmioRead(0xD0000010, 4))
    h.handle(v, exits.MmioWrite(0xD0000020, b"\x01\x00"))
    h.handle(v, exits.MmioRead(0xE0000000, 8))
    assert v.mmio_in == [b"\xdd\xcc\xbb\xaa", b"\xff" * 8]
    assert r.writes == [(0x20, 2, 1)]


def test_device_bug_does_not_escape():
    pio, _, stops, h = make()
    pio.register(0x100, 4, Broken())
    v = FakeVcpu()
    h.handle(v, exits.IoOut(0x100, 1, b"x"))
    h.handle(v, exits.IoIn(0x100, 1, 1, 0))
    assert v.io_in == [b"\xff"] and h.device_errors == 2 and stops == []


def test_terminal_exits_stop_with_documented_status():
    _, _, stops, h = make()
    v = FakeVcpu()
    h.handle(v, exits.Shutdown())
    h.handle(v, exits.SystemEvent(exits.SYSTEM_EVENT_SHUTDOWN, ()))
    h.handle(v, exits.SystemEvent(exits.SYSTEM_EVENT_RESET, ()))
    h.handle(v, exits.InternalError(1, (0x10,)))
    h.handle(v, exits.Other(99))
    assert [s for s, _ in stops] == [exit_status.TRIPLE_FAULT, exit_status.POWEROFF, exit_status.RESET,
                                     exit_status.UNHANDLED_EXIT, exit_status.UNHANDLED_EXIT]
    assert "emulation failed" in stops[3][1]


def test_interrupted_and_hlt_continue():
    _, _, stops, h = make()
    h.handle(FakeVcpu(), exits.Interrupted())
    h.handle(FakeVcpu(), exits.Hlt())
    assert stops == []


def test_assist_can_claim_an_exit():
    pio, mmio, stops = Bus("p"), Bus("m"), []
    h = ExitHandler(pio, mmio, lambda *a: stops.append(a), assist=lambda vcpu, e: True)
    h.handle(FakeVcpu(), exits.InternalError(1, ()))
    assert stops == []


def test_debug_exit_status_matches_qemu():
    assert exit_status.debug_exit(0) == 1
    assert exit_status.debug_exit(0x10) == 0x21
    assert exit_status.debug_exit(0x7F) == 0xFF


class ScriptedVcpu:
    """A vCPU whose KVM_RUN replays a list of exits written into a fake run page."""

    index = 1

    def __init__(self, script, flag):
        import struct

        self.page = bytearray(4096)
        self.run_page = self.page
        self.script = list(script)
        self.flag = flag
        self._struct = struct
        self.io_in = []

    def run_reason(self):
        if not self.script:
            self.flag.stopping = True
            return exits.EXIT_INTR
        kind, *args = self.script.pop(0)
        if kind == "out":
            port, size, value = args
            self._struct.pack_into("<BBHIQ", self.page, exits.RUN_UNION, exits.IO_OUT, size, port, 1, 0x100)
            self.page[0x100 : 0x100 + size] = value.to_bytes(size, "little")
            return exits.EXIT_IO
        if kind == "in":
            port, size = args
            self._struct.pack_into("<BBHIQ", self.page, exits.RUN_UNION, exits.IO_IN, size, port, 1, 0x200)
            return exits.EXIT_IO
        if kind == "intr":
            return exits.EXIT_INTR
        self._struct.pack_into("<I", self.page, exits.RUN_EXIT_REASON, exits.EXIT_SHUTDOWN)
        return exits.EXIT_SHUTDOWN

    def io_exit(self):
        return self._struct.unpack_from("<BBHIQ", self.page, exits.RUN_UNION)

    def complete_io_in(self, e, data):
        self.io_in.append(data)


def test_fast_loop_dispatches_port_io_and_falls_back_for_the_rest():
    from pyvirt.vmm.vcpu_loop import StopFlag, run_vcpu

    pio, _, stops, h = make()
    reg = Reg(0xBEEF)
    pio.register(0x80, 2, reg)
    pio.register(0x100, 4, Broken())
    flag = StopFlag()
    v = ScriptedVcpu([("out", 0x80, 1, 0x42), ("intr",), ("in", 0x81, 2), ("out", 0x100, 4, 1),
                      ("in", 0x100, 1), ("in", 0x3333, 4), ("shutdown",)], flag)
    run_vcpu(v, h, flag)
    assert reg.writes == [(0, 1, 0x42)]
    assert h.device_errors == 2  # the broken device never takes the loop down
    assert stops and stops[0][0] == exit_status.TRIPLE_FAULT
    # the IN results were written into the run page: the last one, an unclaimed port, is all-ones
    assert bytes(v.page[0x200:0x204]) == b"\xff" * 4
