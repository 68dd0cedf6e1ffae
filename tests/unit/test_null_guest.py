"""The benchmark's null guest (guest/build-null-guest.py): a valid multiboot image, built idempotently."""

from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import pytest

BUILDER = Path(__file__).resolve().parents[2] / "guest" / "build-null-guest.py"


@pytest.fixture(scope="module")
def null_guest():
    spec = importlib.util.spec_from_file_location("build_null_guest", BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_header_is_a_valid_multiboot_aout_kludge(null_guest) -> None:
    data = null_guest.image()
    magic, flags, checksum, header, load, load_end, bss_end, entry = struct.unpack_from("<8I", data)
    assert magic == 0x1BADB002
    assert flags == 1 << 16  # addresses in the header, nothing else asked of the loader
    assert (magic + flags + checksum) & 0xFFFFFFFF == 0
    assert header == load == 0x100000
    assert (load_end, bss_end) == (0, 0)
    assert entry == load + 32  # the code right after the header


def test_code_points_at_the_ready_line(null_guest) -> None:
    data = null_guest.image()
    entry = struct.unpack_from("<I", data, 28)[0]
    code = data[entry - 0x100000 :]
    assert code[0] == 0xBE  # mov esi, imm32
    message = struct.unpack_from("<I", code, 1)[0] - 0x100000
    assert data[message:].split(b"\0")[0] == b"SLURM-VC-READY null-guest\r\n"
    assert data.endswith(b"\0")
    assert struct.unpack_from("<H", code, 7)[0] == 0x3F8  # mov dx, COM1


def test_jumps_land_on_instructions(null_guest) -> None:
    code = null_guest.code(0)
    # jz done: +3 from the end of the jz (offset 14) lands on cli (offset 17)
    assert code[12:14] == b"\x74\x03" and code[17] == 0xFA
    # jmp next: -8 from offset 17 lands on lodsb (offset 9)
    assert code[15:17] == b"\xeb\xf8" and code[9] == 0xAC
    # jmp hlt: -3 from offset 21 lands on hlt (offset 18)
    assert code[19:21] == b"\xeb\xfd" and code[18] == 0xF4


def test_build_writes_once(null_guest, tmp_path: Path) -> None:
    assert null_guest.main(["build", str(tmp_path)]) == 0
    path = tmp_path / "null-guest.bin"
    assert path.read_bytes() == null_guest.image()
    os.utime(path, (1, 1))
    assert null_guest.main(["build", str(tmp_path)]) == 0
    assert path.stat().st_mtime == 1  # unchanged bytes are not rewritten
    assert null_guest.main(["build"]) == 2
