"""Tests of the port 0x80 POST-code sink."""

from __future__ import annotations

from pyvirt.devices.legacy.post import PostCode


def test_remembers_last_code_and_counts() -> None:
    post = PostCode()
    assert post.read(0, 1) == 0
    for code in (0x10, 0x20, 0xAA):
        post.write(0, 1, code)
    assert (post.last, post.count) == (0xAA, 3)
    assert post.read(0, 1) == 0xAA
    post.write(0, 2, 0x1234)  # outw: only the low byte lands on port 0x80
    assert post.last == 0x34
    assert post.read(0, 2) == 0xFF34
