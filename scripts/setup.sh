#!/usr/bin/env bash
# Set up everything pyvirt needs on a Debian machine, as root: Debian packages
# (only those missing), a virtualenv in .venv with pyvirt and its test tools,
# and the guest kit. Safe to run again; fast when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v qemu-img >/dev/null || need+=(qemu-utils)
# `make test` also runs the guest kit under QEMU, the peer it is cross-checked against.
if [ "${PYVIRT_TEST_DEPS:-0}" = 1 ]; then
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
fi
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.pyvirt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[test]"
    touch "$stamp"
fi
# Byte-compile pyvirt once, as installing a wheel would: `pyvirt run` then
# starts without compiling its sources (which costs ~50 ms each time where
# PYTHONDONTWRITEBYTECODE is set). compileall writes the caches regardless.
.venv/bin/python -m compileall -q src >/dev/null
make -s -C guests
