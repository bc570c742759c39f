"""The live-migration wire protocol (migration/stream.py) over a socketpair:
framing, checks on everything a hostile peer controls, bulk page transfer
straight into memory, and the address syntax. No VM, no network."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvirt.migration import stream
from pyvirt.migration.stream import (
    BULK, FRAME, MAX_BULK, MAX_JSON, MAX_RUNS, PAGE, PAGES_COUNT, PAGES_RUN, Channel, MigrationError, PeerError,
    parse_uri)

RAM_GPA = 0x10000  # the fake guest RAM the receiving side validates against
RAM_PAGES = 16


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    for s in (a, b):
        s.settimeout(10)  # a bug shows up as a MigrationError, not a hung suite
    src, dst = Channel(a, "the destination"), Channel(b, "the source")  # each names its peer
    yield src, dst
    src.close()
    dst.close()


class Ram:
    """Guest RAM for the receiving side: `target` checks each run as the
    destination's `_ram` does and records the ranges it handed out."""

    def __init__(self, pages: int = RAM_PAGES, fill: int = 0x55) -> None:
        self.buf = bytearray([fill]) * (pages * PAGE)
        self.fill = fill
        self.given: list[tuple[int, int]] = []

    def target(self, gpa: int, length: int) -> memoryview:
        if gpa % PAGE or length % PAGE or length == 0:
            raise MigrationError(f"memory at {gpa:#x}+{length:#x}: not whole pages")
        if not (RAM_GPA <= gpa and gpa + length <= RAM_GPA + len(self.buf)):
            raise MigrationError(f"memory at {gpa:#x}+{length:#x} is outside RAM")
        self.given.append((gpa, length))
        off = gpa - RAM_GPA
        return memoryview(self.buf)[off:off + length]

    def page(self, gpa: int) -> bytes:
        off = gpa - RAM_GPA
        return bytes(self.buf[off:off + PAGE])


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def frame(kind: int, payload: bytes, *, crc: int | None = None, length: int | None = None, flags: int = 0,
          reserved: int = 0) -> bytes:
    return FRAME.pack(kind, flags, reserved, zlib.crc32(payload) if crc is None else crc,
                      len(payload) if length is None else length) + payload


def pages_payload(runs: list[tuple[int, int, int]], data: bytes) -> bytes:
    return PAGES_COUNT.pack(len(runs)) + b"".join(PAGES_RUN.pack(*r) for r in runs) + data


def receive_pages(ch: Channel, ram: Ram) -> int:
    kind, _, length = ch.recv_frame("test")
    assert kind == stream.PAGES
    return ch.recv_pages(length, ram.target, "receiving guest memory")


# --- control messages ------------------------------------------------------------

def test_json_messages_round_trip(pair):
    src, dst = pair
    hello = {"magic": stream.MAGIC, "protocol": stream.PROTOCOL, "config": {"memory": 1 << 30, "disks": []},
             "text": "naïve ☃", "big": 2**64 + 1}
    src.send_json(stream.HELLO, hello)
    dst.send_json(stream.WELCOME, {})
    assert dst.expect(stream.HELLO, "waiting for HELLO") == hello
    assert src.expect(stream.WELCOME, "waiting for WELCOME") == {}
    size = FRAME.size + len(json.dumps(hello, separators=(",", ":")).encode())
    assert src.sent == dst.received == size
    assert dst.sent == src.received == FRAME.size + 2


def test_an_unexpected_message_names_both_types(pair):
    src, dst = pair
    src.send_json(stream.STATE, {})
    with pytest.raises(MigrationError, match=r"the source sent STATE while waiting \(expected COMPLETE\)"):
        dst.expect(stream.COMPLETE, "waiting")


def test_nan_is_not_sent(pair):
    src, _ = pair
    with pytest.raises(ValueError):
        src.send_json(stream.ROUND, {"rate": float("nan")})


def test_crc_mismatch(pair):
    src, dst = pair
    payload = b'{"a":1}'
    src.sock.sendall(frame(stream.HELLO, payload, crc=zlib.crc32(payload) ^ 1))
    with pytest.raises(MigrationError, match="HELLO message from the source fails its CRC check"):
        dst.expect(stream.HELLO, "waiting")


@pytest.mark.parametrize("kind, flags, reserved", [
    (0, 0, 0), (15, 0, 0), (255, 0, 0), (stream.HELLO, 1, 0), (stream.PAGES, 0x80, 0), (stream.HELLO, 0, 1),
    (stream.DONE, 0, 0x8000),
])
def test_invalid_frames(pair, kind, flags, reserved):
    src, dst = pair
    src.sock.sendall(frame(kind, b"{}", flags=flags, reserved=reserved))
    with pytest.raises(MigrationError, match="invalid frame.*not a pyvirt migration stream"):
        dst.recv_frame("waiting")


@pytest.mark.parametrize("kind, length, ok", [
    (stream.STATE, MAX_JSON, True), (stream.STATE, MAX_JSON + 1, False), (stream.HELLO, 2**64 - 1, False),
    (stream.PAGES, MAX_BULK + PAGES_COUNT.size + MAX_RUNS * PAGES_RUN.size, True),
    (stream.PAGES, MAX_BULK + PAGES_COUNT.size + MAX_RUNS * PAGES_RUN.size + 1, False),
    (stream.DISK, MAX_JSON, False),
])
def test_lengths_are_checked_before_the_payload_is_read(pair, kind, length, ok):
    src, dst = pair
    src.sock.sendall(FRAME.pack(kind, 0, 0, 0, length))  # the header alone: nothing follows
    if ok:
        assert dst.recv_frame("waiting") == (kind, 0, length)
    else:
        with pytest.raises(MigrationError, match=rf"sent a {stream.NAMES[kind]} message of {length} bytes \(at most"):
            dst.recv_frame("waiting")


@pytest.mark.parametrize("payload, words", [
    (b"[1, 2]", "is not a JSON object"), (b'"text"', "is not a JSON object"), (b"null", "is not a JSON object"),
    (b"{", "is not valid JSON"), (b'{"a": NaN}', "is not valid JSON"), (b'{"a": -Infinity}', "is not valid JSON"),
    (b"\xff\xfe", "is not valid JSON"), (b"[" * 100000, "is not valid JSON"), (b"", "is not valid JSON"),
])
def test_payloads_that_are_not_json_objects(pair, payload, words):
    src, dst = pair
    sender = threading.Thread(target=src.sock.sendall, args=(frame(stream.ROUND, payload),))
    sender.start()
    with pytest.raises(MigrationError, match=f"a ROUND message from the source {words}"):
        dst.expect(stream.ROUND, "waiting")
    sender.join()


def test_an_error_from_the_peer_is_a_peer_error_with_its_message(pair):
    src, dst = pair
    src.send_error("cannot open the disks here: /img/a.qcow2: no such file")
    with pytest.raises(PeerError, match="^the source: cannot open the disks here: /img/a.qcow2: no such file$"):
        dst.expect(stream.WELCOME, "waiting")  # whatever was expected, ERROR is the answer
    src.send_json(stream.ERROR, {"reason": 1})
    with pytest.raises(PeerError, match="the source: unknown error"):
        dst.expect(stream.READY, "waiting")


def test_errors_sent_to_a_closed_peer_are_ignored_other_sends_fail(pair):
    src, dst = pair
    dst.close()
    src.send_error("never read")  # the reason we stop: nobody to tell is fine
    with pytest.raises(MigrationError, match="sending to the destination failed"):
        src.send_json(stream.GO, {})
    page = memoryview(bytearray(PAGE))
    with pytest.raises(MigrationError, match="sending to the destination failed"):
        src.send_pages([(0, page)])


def test_silence_is_reported(pair):
    _, dst = pair
    dst.sock.settimeout(0.05)
    with pytest.raises(MigrationError, match="sent nothing for too long while waiting for READY"):
        dst.expect(stream.READY, "waiting for READY")


# --- pages -----------------------------------------------------------------------------

def test_pages_land_at_their_addresses(pair):
    src, dst = pair
    source = bytearray(pattern(1, RAM_PAGES * PAGE))
    view = memoryview(source)
    runs = [(RAM_GPA, view[0:PAGE]), (RAM_GPA + 3 * PAGE, view[3 * PAGE:6 * PAGE]),
            (RAM_GPA + 15 * PAGE, view[15 * PAGE:16 * PAGE]), (RAM_GPA + 8 * PAGE, view[8 * PAGE:9 * PAGE])]
    src.send_pages(runs)
    ram = Ram()
    assert receive_pages(dst, ram) == 6
    for p in range(RAM_PAGES):
        sent = p in (0, 3, 4, 5, 8, 15)
        assert ram.page(RAM_GPA + p * PAGE) == (bytes(source[p * PAGE:(p + 1) * PAGE]) if sent
                                               else bytes([0x55]) * PAGE), p
    assert ram.given == [(RAM_GPA, PAGE), (RAM_GPA + 3 * PAGE, 3 * PAGE), (RAM_GPA + 15 * PAGE, PAGE),
                         (RAM_GPA + 8 * PAGE, PAGE)]
    assert src.sent == dst.received == FRAME.size + PAGES_COUNT.size + 4 * PAGES_RUN.size + 6 * PAGE


def test_the_most_runs_and_more_data_than_the_socket_holds(pair):
    """MAX_RUNS scattered pages (more buffers than one sendmsg takes once the
    frame and the run table are added, and 4 MiB: far more than the socket
    buffers), received by a thread while the sender blocks."""
    src, dst = pair
    pages = 2 * MAX_RUNS
    source = bytearray(pattern(2, pages * PAGE))
    view = memoryview(source)
    runs = [(RAM_GPA + p * PAGE, view[p * PAGE:(p + 1) * PAGE]) for p in range(0, pages, 2)]  # every other page
    assert len(runs) == MAX_RUNS
    ram = Ram(pages)
    result: list[object] = []

    def reader() -> None:
        try:
            result.append(receive_pages(dst, ram))
        except Exception as e:  # handed to the test thread
            result.append(e)

    t = threading.Thread(target=reader)
    t.start()
    src.send_pages(runs)
    t.join(20)
    assert result == [MAX_RUNS]
    for p in (0, 1, 2, 777, pages - 2, pages - 1):
        want = bytes(source[p * PAGE:(p + 1) * PAGE]) if p % 2 == 0 else bytes([0x55]) * PAGE
        assert ram.page(RAM_GPA + p * PAGE) == want, p
    assert ram.buf[0::2 * PAGE] == source[0::2 * PAGE]  # the first byte of every sent page


def test_a_run_the_target_refuses_stops_the_transfer(pair):
    src, dst = pair
    data = memoryview(bytearray(pattern(3, 2 * PAGE)))
    src.send_pages([(RAM_GPA, data[:PAGE]), (RAM_GPA + RAM_PAGES * PAGE, data[PAGE:])])  # the 2nd is past RAM
    ram = Ram()
    with pytest.raises(MigrationError, match="outside RAM"):
        receive_pages(dst, ram)
    assert ram.buf == bytearray([0x55]) * len(ram.buf)  # nothing was read into memory


def _send_raw_pages(src: Channel, runs: list[tuple[int, int, int]], data: bytes, length: int | None = None) -> None:
    payload = pages_payload(runs, data)
    src.sock.sendall(FRAME.pack(stream.PAGES, 0, 0, 0, len(payload) if length is None else length) + payload)


@pytest.mark.parametrize("runs, data, length, words", [
    # the runs' pages do not add up to the frame's length
    ([(RAM_GPA, 1, 0)], bytes(2 * PAGE), None, "runs do not add up to its length"),
    ([(RAM_GPA, 2, 0)], bytes(PAGE), None, "runs do not add up to its length"),
    ([(RAM_GPA, 1, 0)], bytes(PAGE), 4 + 16 + PAGE - 1, "runs do not add up to its length"),
    # runs of no pages, reserved fields set
    ([(RAM_GPA, 0, 0)], b"", None, r"malformed PAGES run \(0x10000, 0 pages\)"),
    ([(RAM_GPA, 1, 0), (RAM_GPA + PAGE, 0, 0)], bytes(PAGE), None, "malformed PAGES run"),
    ([(RAM_GPA, 1, 1)], bytes(PAGE), None, "malformed PAGES run"),
    ([(RAM_GPA, 1, 0x80000000)], bytes(PAGE), None, "malformed PAGES run"),
    # run counts
    ([], b"", None, "with 0 runs in 4 bytes"),
    ([(RAM_GPA, 1, 0)] * 2, bytes(PAGE), 4 + 16, "with 2 runs in 20 bytes"),
])
def test_malformed_pages_messages(pair, runs, data, length, words):
    src, dst = pair
    _send_raw_pages(src, runs, data, length)
    ram = Ram()
    with pytest.raises(MigrationError, match=words):
        receive_pages(dst, ram)
    assert ram.buf == bytearray([0x55]) * len(ram.buf)


def test_too_many_runs_are_refused_before_reading_them(pair):
    src, dst = pair
    src.sock.sendall(FRAME.pack(stream.PAGES, 0, 0, 0, 4 + 16 * (MAX_RUNS + 1) + PAGE * (MAX_RUNS + 1))
                     + PAGES_COUNT.pack(MAX_RUNS + 1))
    with pytest.raises(MigrationError, match=f"with {MAX_RUNS + 1} runs"):
        receive_pages(dst, Ram())


def test_a_pages_message_shorter_than_its_count(pair):
    src, dst = pair
    src.sock.sendall(FRAME.pack(stream.PAGES, 0, 0, 0, 3) + b"\1\0\0")
    with pytest.raises(MigrationError, match="sent a PAGES message of 3 bytes"):
        receive_pages(dst, Ram())


def test_huge_run_lengths_reach_the_target_only_to_be_refused(pair):
    """pages is a u32: 2**32-1 pages is 16 TiB, which the target refuses
    (no byte of it is read, and the length check cannot overflow)."""
    src, dst = pair
    _send_raw_pages(src, [(RAM_GPA, 0xFFFF_FFFF, 0)], b"")
    ram = Ram()
    with pytest.raises(MigrationError, match="outside RAM"):
        receive_pages(dst, ram)


# --- a stream cut short --------------------------------------------------------------

def test_a_stream_cut_inside_a_frame_header(pair):
    src, dst = pair
    src.sock.sendall(frame(stream.HELLO, b"{}")[:5])
    src.close()
    with pytest.raises(MigrationError, match=r"the connection was closed while waiting \(after 5 of 16 bytes\)"):
        dst.recv_frame("waiting")


def test_a_stream_cut_inside_a_json_payload(pair):
    src, dst = pair
    payload = json.dumps({"vcpus": list(range(100))}).encode()
    src.sock.sendall(frame(stream.STATE, payload)[:FRAME.size + 50])
    src.close()
    with pytest.raises(MigrationError, match=r"connection was closed while loading \(after 50 of"):
        dst.expect(stream.STATE, "loading")


@pytest.mark.parametrize("keep", [FRAME.size + 2, FRAME.size + 4 + 10, FRAME.size + 4 + 32 + PAGE + 100])
def test_a_stream_cut_inside_a_pages_message(pair, keep):
    src, dst = pair
    data = pattern(4, 3 * PAGE)
    whole = frame(stream.PAGES, pages_payload([(RAM_GPA, 1, 0), (RAM_GPA + 4 * PAGE, 2, 0)], data), crc=0)
    src.sock.sendall(whole[:keep])
    src.close()
    with pytest.raises(MigrationError, match="the connection was closed while receiving guest memory"):
        receive_pages(dst, Ram())


def test_a_cut_before_anything_arrived(pair):
    src, dst = pair
    src.close()
    with pytest.raises(MigrationError, match=r"closed while waiting \(after 0 of 16 bytes\)"):
        dst.expect(stream.HELLO, "waiting")


# --- addresses -------------------------------------------------------------------------

@pytest.mark.parametrize("uri, address", [
    ("tcp:10.0.0.2:4444", ("10.0.0.2", 4444)),
    ("tcp:dest.example:1", ("dest.example", 1)),
    ("tcp:[::1]:65535", ("::1", 65535)),
    ("tcp:[fe80::1%eth0]:5000", ("fe80::1%eth0", 5000)),
    ("tcp:0.0.0.0:4444", ("0.0.0.0", 4444)),
])
def test_parse_uri(uri, address):
    assert parse_uri(uri) == address


@pytest.mark.parametrize("uri, words", [
    ("10.0.0.2:4444", "use tcp:HOST:PORT"), ("unix:/run/mig.sock", "use tcp:HOST:PORT"),
    ("TCP:h:1", "use tcp:HOST:PORT"), ("", "use tcp:HOST:PORT"), ("tcp", "use tcp:HOST:PORT"),
    ("tcp:host", "the port must be a number"), ("tcp:host:", "the port must be a number"),
    ("tcp:host:0", "from 1 to 65535"), ("tcp:host:65536", "from 1 to 65535"), ("tcp:host:-1", "must be a number"),
    ("tcp:host:http", "must be a number"), ("tcp:[::1]", "must be a number"),
    ("tcp::4444", "no host"), ("tcp:[]:4444", "no host"),
])
def test_parse_uri_refuses(uri, words):
    with pytest.raises(ValueError, match=words) as e:
        parse_uri(uri)
    assert repr(uri) in str(e.value)


# --- fuzzing: whatever the peer sends --------------------------------------------------

GPAS = st.sampled_from([RAM_GPA, RAM_GPA + PAGE, RAM_GPA + (RAM_PAGES - 1) * PAGE, RAM_GPA + RAM_PAGES * PAGE,
                        RAM_GPA - PAGE, RAM_GPA + 1, 0, 2**64 - PAGE]) | st.integers(0, 2**64 - 1)
KINDS = st.sampled_from([*stream.NAMES, 0, 15, 255])
# Cheaper to draw than a recursive JSON strategy, and what matters here: objects, non-objects, near-JSON.
JSON_PAYLOADS = st.sampled_from([b"{}", b'{"a":1}', b'{"message":"stop"}', b'{"a":[1,{"b":null}],"c":"\xc3\xa9"}',
                                 b"[]", b"null", b"1e400", b'{"a":NaN}', b'{"a":1,"a":2}', b"{" * 50, b'"\\ud800"'])


@st.composite
def a_frame(draw: st.DrawFn) -> bytes:
    kind = draw(KINDS)
    payload = draw(st.binary(max_size=48) | JSON_PAYLOADS)
    crc = draw(st.sampled_from([zlib.crc32(payload), 0]) | st.integers(0, 2**32 - 1))
    length = len(payload) + draw(st.sampled_from([0, 0, 0, -1, 1, 100]) | st.integers(-len(payload), 2**64))
    flags = draw(st.sampled_from([0, 0, 0, 1]))
    return FRAME.pack(kind, flags, 0, crc, max(0, min(length, 2**64 - 1))) + payload


@st.composite
def a_pages_message(draw: st.DrawFn) -> bytes:
    runs = draw(st.lists(st.tuples(GPAS, st.sampled_from([0, 1, 2, 3]) | st.integers(0, 2**32 - 1),
                                   st.sampled_from([0, 0, 0, 1])), max_size=4))
    count = draw(st.sampled_from([len(runs), len(runs), 0, MAX_RUNS + 1]) | st.integers(0, 2**32 - 1))
    data = bytes(draw(st.integers(0, 4)) * PAGE) + draw(st.binary(max_size=8))
    payload = PAGES_COUNT.pack(count) + b"".join(PAGES_RUN.pack(*r) for r in runs) + data
    length = len(payload) + draw(st.sampled_from([0, 0, 0, -1, 1, -PAGE, PAGE]))
    return FRAME.pack(stream.PAGES, 0, 0, 0, max(0, length)) + payload


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40) | a_frame() | a_pages_message(), max_size=6), st.integers(0, 3))
def test_any_byte_stream_is_read_or_refused_never_escapes(parts, cut):
    data = b"".join(parts)
    data = data[:len(data) - cut] if cut < len(data) else data
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    ram = Ram(RAM_PAGES)
    try:
        a.sendall(data)  # at most a few KiB: the socket holds it all
        a.shutdown(socket.SHUT_WR)
        ch = Channel(b, "the fuzzer")
        with pytest.raises(MigrationError):  # every frame takes 16 bytes: the stream ends, in an error at its end
            while True:
                kind, crc, length = ch.recv_frame("fuzzing")
                assert kind in stream.NAMES
                if kind == stream.PAGES:
                    assert ch.recv_pages(length, ram.target, "fuzzing") > 0
                elif kind in BULK:
                    raise MigrationError("DISK is not read here")
                elif length > 1 << 20:
                    raise MigrationError("a long JSON message: the stream cannot hold it")
                else:
                    assert isinstance(ch.recv_json(kind, crc, length, "fuzzing"), dict)
    finally:
        a.close()
        b.close()
    # Every byte that changed lies in a range the target checked and handed out.
    outside = bytearray(ram.buf)
    for g, n in ram.given:
        assert RAM_GPA <= g and g + n <= RAM_GPA + len(ram.buf) and g % PAGE == 0 and n % PAGE == 0
        outside[g - RAM_GPA:g - RAM_GPA + n] = bytes([ram.fill]) * n
    assert outside == bytearray([ram.fill]) * len(ram.buf)


def test_frame_and_run_layouts():
    # The documented wire layout: u8 type, u8 flags, u16 reserved, u32 crc, u64 length;
    # runs (u64 gpa, u32 pages, u32 0) after a u32 count. Changing it changes PROTOCOL.
    assert FRAME.size == 16 and PAGES_COUNT.size == 4 and PAGES_RUN.size == 16
    assert FRAME.pack(3, 0, 0, 0xAABBCCDD, 5) == b"\x03\x00\x00\x00\xdd\xcc\xbb\xaa\x05" + bytes(7)
    assert struct.unpack("<QII", PAGES_RUN.pack(0x1000, 2, 0)) == (0x1000, 2, 0)
