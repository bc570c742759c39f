"""VmConfig parsing and validation."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvirt.vmm import config
from pyvirt.vmm.config import ConfigError, SerialConfig, VmConfig, parse_size


@pytest.mark.parametrize("text,expected", [("128M", 128 << 20), ("1G", 1 << 30), ("512", 512 << 20),
                                           ("64MiB", 64 << 20), ("4096k", 4 << 20), (256, 256 << 20)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "12X", "", "-5M"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text)


def test_serial_specs():
    assert SerialConfig.parse("stdio").kind == "stdio"
    assert SerialConfig.parse("file:/tmp/x") == SerialConfig("file", "/tmp/x")
    assert SerialConfig.parse("socket:/tmp/s") == SerialConfig("socket", "/tmp/s")
    with pytest.raises(ConfigError, match="file:PATH"):
        SerialConfig.parse("tcp:1234")


def test_config_file_relative_paths(tmp_path):
    (tmp_path / "k.elf").write_bytes(b"x")
    f = tmp_path / "vm.json"
    f.write_text(json.dumps({"kernel": "k.elf", "memory": "64M", "cpus": 2, "serial": "null"}))
    cfg = VmConfig.from_file(str(f))
    assert cfg.kernel == str(tmp_path / "k.elf") and cfg.memory == 64 << 20 and cfg.cpus == 2
    assert cfg.serial.kind == "null"
    cfg.validate()


def test_config_file_errors(tmp_path):
    f = tmp_path / "vm.json"
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        VmConfig.from_file(str(f))
    f.write_text(json.dumps({"kernal": "x"}))
    with pytest.raises(ConfigError, match="unknown config keys: kernal"):
        VmConfig.from_file(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        VmConfig.from_file(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("change,message", [
    ({"kernel": ""}, "no kernel"),
    ({"kernel": "/nonexistent"}, "does not exist"),
    ({"memory": 1000}, "multiple of the 4 KiB"),
    ({"memory": 4096}, "at least 2 MiB"),
    ({"cpus": 0}, "cpus 0"),
    ({"pvm": "maybe"}, "pvm"),
])
def test_validation_messages(tmp_path, change, message):
    k = tmp_path / "k"
    k.write_bytes(b"x")
    cfg = VmConfig(kernel=str(k))
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789kmgtbiKMGTBI \t\n\x0b\x1c-+.xı\u212a\u2003１٣", max_size=10))
def test_size_parser_matches_its_regular_expression(text):
    m = re.match(config._SIZE_RE, text, re.IGNORECASE)
    parts = config._split_size(text)
    got = (parts[0], parts[1].lower()) if parts else None
    assert got == ((m.group(1), m.group(2).lower()) if m else None)


def test_api_socket_setting(tmp_path):
    assert VmConfig().api_socket is None
    cfg = VmConfig.from_dict({"api_socket": "vm.sock"}, base=str(tmp_path))
    assert cfg.api_socket == str(tmp_path / "vm.sock")  # relative to the config file, like its other paths
    assert VmConfig.from_dict({"api_socket": "/run/vm.sock"}).api_socket == "/run/vm.sock"
    with pytest.raises(ConfigError, match="api_socket"):
        VmConfig.from_dict({"api_socket": 3})


def test_api_socket_path_must_fit_a_socket_address(tmp_path):
    kernel = tmp_path / "k.elf"
    kernel.write_bytes(b"x")
    VmConfig(kernel=str(kernel), api_socket="/tmp/" + "a" * 100).validate()
    with pytest.raises(ConfigError, match="shorter"):
        VmConfig(kernel=str(kernel), api_socket="/tmp/" + "a" * 110).validate()
    with pytest.raises(ConfigError, match="api_socket"):
        VmConfig(kernel=str(kernel), api_socket="").validate()
