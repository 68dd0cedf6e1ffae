#!/usr/bin/env python3
"""Build the null guest: an 81-byte multiboot kernel that prints the ready line on COM1 and halts.

    guest/build-null-guest.py OUT_DIR        # writes OUT_DIR/null-guest.bin

It exists for one measurement: the time-to-cluster benchmark's control-plane overhead.  Under TCG the
tiny Linux guest's own boot takes 5-10 s and varies by seconds from one boot to the next, more than
the 1 s goal that is measured as a difference of boots.  This "guest" has nothing to boot: QEMU's
firmware loads it (direct kernel boot, QEMU's multiboot loader), it writes
``SLURM-VC-READY null-guest`` to the first serial port and halts, so what is left of a guest start
is QEMU, its firmware and everything slurm-vc, Slurm and libvirt do around them.  It has no network,
no agent and no seed: it is not for jobs that use their guests.

The image is a multiboot v1 kernel in the "a.out kludge" form (header flag 16: the load address and
the entry point are in the header), so no linker or assembler is needed, only these bytes:

    header (32 bytes)  magic 0x1BADB002, flags 0x00010000, checksum, header/load addresses, entry
    code   (21 bytes)  mov esi, MESSAGE; mov dx, 0x3F8
               next:   lodsb; test al, al; jz done; out dx, al; jmp next
               done:   cli; hlt; jmp (back to hlt)
    message            b"SLURM-VC-READY null-guest\\r\\n\\0"

A multiboot loader enters in 32-bit protected mode with paging off and interrupts masked, at the
entry address; QEMU's UART passes a byte written to its data port straight to the chardev.
"""

from __future__ import annotations

import os
import struct
import sys

LOAD_ADDRESS = 0x100000  # 1 MiB: where multiboot kernels conventionally load
MULTIBOOT_MAGIC = 0x1BADB002
MULTIBOOT_AOUT_KLUDGE = 1 << 16  # the header gives the load addresses and the entry point
HEADER_SIZE = 32
COM1 = 0x3F8
READY_LINE = b"SLURM-VC-READY null-guest\r\n"
IMAGE_NAME = "null-guest.bin"


def multiboot_header(entry: int) -> bytes:
    """The 32-byte multiboot v1 header with the a.out kludge fields (load the whole file)."""
    checksum = -(MULTIBOOT_MAGIC + MULTIBOOT_AOUT_KLUDGE) & 0xFFFFFFFF
    return struct.pack(
        "<8I",
        MULTIBOOT_MAGIC,
        MULTIBOOT_AOUT_KLUDGE,
        checksum,
        LOAD_ADDRESS,  # header_addr: the header is the file's first bytes
        LOAD_ADDRESS,  # load_addr
        0,  # load_end_addr: 0 = up to the end of the file
        0,  # bss_end_addr: no bss
        entry,
    )


def code(message_address: int) -> bytes:
    """Print the NUL-terminated string at ``message_address`` on COM1, then halt for good."""
    return (
        b"\xbe" + struct.pack("<I", message_address)  # mov esi, message
        + b"\x66\xba" + struct.pack("<H", COM1)  # mov dx, 0x3F8
        + b"\xac"  # next: lodsb
        + b"\x84\xc0"  # test al, al
        + b"\x74\x03"  # jz done (+3)
        + b"\xee"  # out dx, al
        + b"\xeb\xf8"  # jmp next (-8)
        + b"\xfa"  # done: cli
        + b"\xf4"  # hlt
        + b"\xeb\xfd"  # jmp hlt (-3): a non-maskable interrupt would resume after hlt
    )  # fmt: skip


def image() -> bytes:
    """The whole null guest image."""
    entry = LOAD_ADDRESS + HEADER_SIZE
    code_size = len(code(0))
    message_address = entry + code_size
    return multiboot_header(entry) + code(message_address) + READY_LINE + b"\0"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, IMAGE_NAME)
    data = image()
    try:
        with open(path, "rb") as existing:
            if existing.read() == data:
                return 0  # unchanged: keep the file (and its mtime)
    except FileNotFoundError:
        pass
    temporary = path + ".tmp"
    with open(temporary, "wb") as out:
        out.write(data)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
