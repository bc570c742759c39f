"""Register-level tests of the 16550A UART model."""

from __future__ import annotations

import threading

from pyvirt.devices.legacy.serial import INPUT_LIMIT, Serial
from pyvirt.testing import FakeIrq

THR = RBR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


def make() -> tuple[Serial, FakeIrq, list[bytes]]:
    out: list[bytes] = []
    irq = FakeIrq()
    return Serial(irq, out.append), irq, out


def rd(uart: Serial, reg: int) -> int:
    return uart.read(reg, 1)


def wr(uart: Serial, reg: int, value: int) -> None:
    uart.write(reg, 1, value)


def test_transmit_calls_out_per_byte_and_thr_is_always_empty() -> None:
    uart, irq, out = make()
    assert rd(uart, LSR) == 0x60  # THRE | TEMT, no data
    for ch in b"hi\n":
        wr(uart, THR, ch)
        assert rd(uart, LSR) & 0x60 == 0x60
    assert out == [b"h", b"i", b"\n"]
    assert uart.statistics().tx_bytes == 3
    assert not irq.history  # no interrupts enabled, the line was never touched


def test_dlab_switches_offsets_0_and_1_to_the_divisor_latch() -> None:
    uart, _, out = make()
    wr(uart, IER, 0x05)
    wr(uart, LCR, 0x83)  # DLAB + 8N1
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert (rd(uart, DLL), rd(uart, DLM)) == (0x01, 0x02)
    assert out == []  # a DLL write is not a transmit
    wr(uart, LCR, 0x03)
    assert rd(uart, IER) == 0x05  # IER untouched by the DLM write
    assert rd(uart, LCR) == 0x03
    wr(uart, THR, 0x41)
    assert out == [b"A"]
    wr(uart, LCR, 0x80)
    assert (rd(uart, DLL), rd(uart, DLM)) == (0x01, 0x02)


def test_ier_keeps_four_bits_and_scratch_register_holds_a_byte() -> None:
    uart, _, _ = make()
    wr(uart, IER, 0xFF)
    assert rd(uart, IER) == 0x0F
    wr(uart, SCR, 0xA5)
    assert rd(uart, SCR) == 0xA5


def test_thr_empty_interrupt_raised_on_enable_and_after_each_write() -> None:
    uart, irq, _ = make()
    wr(uart, IER, 0x02)
    assert irq.level
    assert rd(uart, IIR) == 0x02  # THR empty is the reason ...
    assert not irq.level  # ... and reading IIR acknowledged it
    assert rd(uart, IIR) == 0x01
    wr(uart, THR, ord("x"))
    assert irq.level and rd(uart, IIR) == 0x02
    wr(uart, IER, 0x02)  # unchanged enable: no new interrupt
    assert not irq.level
    wr(uart, THR, ord("y"))
    wr(uart, IER, 0x00)  # disabling drops the pending interrupt
    assert not irq.level and rd(uart, IIR) == 0x01
    assert irq.raised == 3


def test_receive_sets_data_ready_and_interrupt() -> None:
    uart, irq, _ = make()
    uart.receive(b"ab")
    assert rd(uart, LSR) & 0x01
    assert not irq.level  # RX interrupt not enabled yet
    wr(uart, IER, 0x01)
    assert irq.level and rd(uart, IIR) == 0x04
    assert rd(uart, IIR) == 0x04  # reading IIR does not clear RX data available
    assert rd(uart, RBR) == ord("a")
    assert irq.level
    assert rd(uart, RBR) == ord("b")
    assert not irq.level and rd(uart, LSR) & 0x01 == 0 and rd(uart, IIR) == 0x01
    assert rd(uart, RBR) == 0  # empty
    assert uart.statistics().rx_bytes == 2


def test_rx_fifo_keeps_order_and_capacity() -> None:
    uart, _, _ = make()
    wr(uart, FCR, 0x07)
    data = bytes(range(40))
    uart.receive(data)
    assert uart.pending_input() == 40
    assert uart.state().rx_fifo == data[:16]
    assert bytes(rd(uart, RBR) for _ in range(40)) == data
    assert uart.pending_input() == 0


def test_without_fifo_rbr_holds_one_byte_and_order_is_kept() -> None:
    uart, _, _ = make()
    uart.receive(b"xyz")
    assert uart.state().rx_fifo == b"x"
    assert bytes(rd(uart, RBR) for _ in range(3)) == b"xyz"


def test_fifo_identification_and_reset_bits() -> None:
    uart, _, _ = make()
    assert rd(uart, IIR) & 0xC0 == 0
    wr(uart, FCR, 0x01)
    assert rd(uart, IIR) == 0xC1  # 16550A: both FIFO bits, no interrupt
    uart.receive(bytes(40))
    wr(uart, FCR, 0x03)  # clear RX: the 16 FIFO bytes go, queued input refills it
    assert uart.pending_input() == 24
    wr(uart, FCR, 0x00)  # leaving FIFO mode empties it; one byte refills RBR
    assert rd(uart, IIR) == 0x01
    assert uart.pending_input() == 8
    assert len(uart.state().rx_fifo) == 1
    wr(uart, FCR, 0xC6)  # bit 0 clear: the other bits do not take
    assert uart.state().fcr == 0


def test_interrupt_priorities() -> None:
    uart, irq, _ = make()
    wr(uart, IER, 0x0F)
    assert rd(uart, IIR) == 0x02  # enabling THRI raised THR empty
    wr(uart, MCR, 0x10)  # loopback: DSR/CTS/DCD drop -> modem status deltas
    wr(uart, THR, 1)
    wr(uart, THR, 2)  # 16450 mode: RBR overrun
    assert irq.level
    assert rd(uart, IIR) == 0x06  # line status first
    assert rd(uart, LSR) & 0x03 == 0x03  # DR + OE, and the read clears OE
    assert rd(uart, IIR) == 0x04  # then received data
    assert rd(uart, RBR) == 2  # the new byte overwrote the old one
    assert rd(uart, IIR) == 0x02  # then THR empty (acknowledged by this read)
    assert rd(uart, IIR) == 0x00  # then modem status
    assert rd(uart, MSR) & 0x0F
    assert rd(uart, IIR) == 0x01 and not irq.level
    assert uart.statistics().overruns == 1


def test_loopback_as_linux_autoconfig_probes_it() -> None:
    uart, _, out = make()
    assert rd(uart, MSR) == 0xB0  # CTS, DSR, DCD: an always-ready host
    wr(uart, MCR, 0x10 | 0x0A)  # loop, OUT2, RTS
    assert rd(uart, MSR) & 0xF0 == 0x90  # CTS from RTS, DCD from OUT2
    wr(uart, MCR, 0x1F)
    assert rd(uart, MSR) & 0xF0 == 0xF0
    wr(uart, FCR, 0x07)
    uart.receive(b"host")  # the input pin is disconnected in loopback
    for ch in b"echo":
        wr(uart, THR, ch)
    assert out == []
    assert bytes(rd(uart, RBR) for _ in range(4)) == b"echo"
    assert rd(uart, LSR) & 0x01 == 0
    wr(uart, MCR, 0x0B)  # leave loopback: host input flows again
    assert bytes(rd(uart, RBR) for _ in range(4)) == b"host"


def test_loopback_fifo_overrun_keeps_old_bytes() -> None:
    uart, _, _ = make()
    wr(uart, FCR, 0x01)
    wr(uart, MCR, 0x10)
    for i in range(17):
        wr(uart, THR, i)
    assert rd(uart, LSR) & 0x02
    assert bytes(rd(uart, RBR) for _ in range(16)) == bytes(range(16))


def test_msr_deltas_and_trailing_edge_ring() -> None:
    uart, _, _ = make()
    wr(uart, MCR, 0x14)  # loop + OUT1 -> RI
    rd(uart, MSR)
    wr(uart, MCR, 0x10)  # RI 1 -> 0: trailing edge
    assert rd(uart, MSR) & 0x0F == 0x04
    assert rd(uart, MSR) & 0x0F == 0  # read clears the deltas


def test_linux_style_autoconfig_detects_16550a() -> None:
    uart, _, _ = make()
    # Scratch and IER probes.
    wr(uart, SCR, 0xA5)
    assert rd(uart, SCR) == 0xA5
    wr(uart, IER, 0)
    assert rd(uart, IER) & 0x0F == 0
    wr(uart, IER, 0x0F)
    assert rd(uart, IER) & 0x0F == 0x0F
    wr(uart, IER, 0)
    # FIFO probe: IIR bits 7:6 = 11.
    wr(uart, FCR, 0x01)
    assert rd(uart, IIR) >> 6 == 3
    # EFR probe with LCR 0xbf must not look like a 16650 (EFR would read 0).
    wr(uart, LCR, 0xBF)
    assert rd(uart, IIR) != 0
    wr(uart, LCR, 0x03)


def test_input_is_bounded_and_drops_are_counted() -> None:
    uart, _, _ = make()
    uart.receive(bytes(INPUT_LIMIT - 10))
    uart.receive(bytes(30))
    assert uart.pending_input() == INPUT_LIMIT
    assert uart.statistics().rx_dropped == 20


def test_wide_access_splits_into_byte_registers() -> None:
    uart, _, out = make()
    uart.write(0, 2, 0x0241)  # THR 'A', then IER = THRI
    assert out == [b"A"]
    assert rd(uart, IER) == 0x02
    assert uart.read(6, 4) == 0xFFFF_00B0  # MSR, SCR, then two ports beyond the UART


def test_concurrent_receive_and_read_lose_nothing() -> None:
    uart, _, _ = make()
    wr(uart, FCR, 0x01)
    data = bytes(i % 251 for i in range(3000))

    def feed() -> None:
        for i in range(0, len(data), 7):
            while uart.pending_input() > INPUT_LIMIT - 7:
                pass
            uart.receive(data[i:i + 7])

    t = threading.Thread(target=feed)
    t.start()
    got = bytearray()
    while len(got) < len(data):
        if rd(uart, LSR) & 0x01:
            got.append(rd(uart, RBR))
    t.join()
    assert bytes(got) == data
    assert uart.statistics().rx_dropped == 0
