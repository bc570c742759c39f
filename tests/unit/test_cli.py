"""`pyvirt run`'s fast option parser must agree with argparse wherever it answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.cli.main import build_parser, parse_restore, parse_run

TOKENS = [
    "run", "host", "-v", "-vv", "-vvv", "--verbose", "--verbose=1", "-vm", "-h", "--help", "--", "-", "",
    "--kernel", "--kernel=k.elf", "k.elf", "--kern", "--initrd", "--initrd=i.img", "--cmdline", "--cmdline=a b",
    "--cmdline=", "console=ttyS0 quiet", "-x", "-5", "--memory", "--memory=1G", "-m", "-m128M", "-m=64M", "128M",
    "--cpus", "--cpus=2", "--smp", "2", " 3", "two", "--debug-exit-port", "0x10", "--debug-exit-port=077", "0o77",
    "--pvm", "--pvm=on", "on", "auto", "maybe", "--serial", "--serial=null", "null", "--config", "vm.json",
    "--config=", "=", "--kernel=-k", "--api-socket", "--api-socket=/tmp/vm.sock", "vm.sock",
]


def _argparse(argv: list[str]) -> dict[str, object] | None:
    try:
        return vars(build_parser().parse_args(argv))
    except SystemExit:
        return None


def _check(argv: list[str]) -> None:
    fast = parse_run(argv)
    if fast is not None:
        assert vars(fast) == _argparse(argv), argv


@pytest.mark.parametrize("argv", [
    ["run"],
    ["run", "--kernel", "k.elf", "--serial", "null", "--memory", "128M"],
    ["run", "-vv", "--kernel=k.elf", "-m", "1G", "--cpus", "4", "--smp", "2", "--pvm", "off", "-v"],
    ["run", "--cmdline", "", "--debug-exit-port", "0xf4", "--initrd", "i", "--config", "c.json"],
    ["run", "--kernel", "k.elf", "--api-socket", "/run/vm.sock"],
])
def test_plain_run_options_take_the_fast_path(argv: list[str]) -> None:
    assert parse_run(argv) is not None
    _check(argv)


@pytest.mark.parametrize("argv", [
    [], ["-v", "run"], ["run", "--help"], ["run", "--kern", "k"], ["run", "--cpus", "x"], ["run", "--pvm", "no"],
    ["run", "--kernel"], ["run", "--cmdline", "-x"], ["run", "-m=64M"], ["run", "extra"], ["host", "check"],
])
def test_everything_else_goes_to_argparse(argv: list[str]) -> None:
    assert parse_run(argv) is None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=8))
def test_fast_parser_agrees_with_argparse(tail: list[str]) -> None:
    _check(["run", *tail])
    _check(tail)


RESTORE_TOKENS = ["restore", "vm.snap", "other.snap", "-v", "-vv", "--verbose", "--verify", "--serial", "null",
                  "--serial=file:/tmp/s", "--api-socket", "/tmp/a.sock", "--api-socket=x", "-x", "--", "", "-",
                  "--serial=", "--help", "--ver"]


def _check_restore(argv: list[str]) -> None:
    fast = parse_restore(argv)
    if fast is not None:
        assert vars(fast) == _argparse(argv), argv


@pytest.mark.parametrize("argv", [
    ["restore", "vm.snap"], ["restore", "-v", "vm.snap", "--serial", "null", "--api-socket=/tmp/a.sock"],
    ["restore", "--verify", "--serial=file:x", "vm.snap"],
])
def test_plain_restore_takes_the_fast_path(argv: list[str]) -> None:
    assert parse_restore(argv) is not None
    _check_restore(argv)


@pytest.mark.parametrize("argv", [["restore"], ["restore", "a", "b"], ["restore", "--help"], ["restore", "--ser", "x", "a"],
                                  ["-v", "restore", "a"], ["restore", "a", "--serial"]])
def test_other_restores_go_to_argparse(argv: list[str]) -> None:
    assert parse_restore(argv) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(RESTORE_TOKENS), max_size=6))
def test_fast_restore_parser_agrees_with_argparse(tail: list[str]) -> None:
    _check_restore(["restore", *tail])
