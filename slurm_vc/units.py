"""Parsing and formatting of sizes and CPU lists: pure functions shared by config, request, topology."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import UsageError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

_SIZE_RE = re.compile(r"^([0-9]{1,15})([KMGT]?)(i?B)?$", re.IGNORECASE)
_SIZE_UNITS = {"": MIB, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
SIZE_HELP = "a whole number with an optional unit K, M, G or T (e.g. 512M, 4G); no unit means MiB"


def parse_size(text: str, *, what: str = "size", default_unit: str = "M") -> int:
    """Parse ``4G``/``512M``/``2048`` (MiB by default) into bytes.  Raises UsageError naming ``what``."""
    value = str(text).strip()
    match = _SIZE_RE.match(value)
    if not match:
        raise UsageError(f"invalid {what} {text!r}: expected {SIZE_HELP}")
    number, unit = int(match.group(1)), match.group(2).upper()
    if not unit:
        unit = default_unit.upper()
    size = number * _SIZE_UNITS[unit]
    if size <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return size


def format_size(size: int) -> str:
    """Format bytes as the largest exact unit: 2097152 -> '2M', 1536 -> '1536K'."""
    for unit, factor in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{unit}"
    return f"{size}B"


_CPULIST_RE = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")
MAX_CPU_ID = 1 << 16


def parse_cpulist(text: str, *, what: str = "CPU list") -> list[int]:
    """Parse a kernel/Slurm CPU list (``0-3,8,10-11``) into sorted unique ints.

    An empty string is an empty list (sysfs writes empty lists for CPU-less NUMA nodes).
    """
    value = str(text).strip()
    if value == "":
        return []
    if not _CPULIST_RE.match(value):
        raise UsageError(f"invalid {what} {text!r}: expected comma-separated ids or ranges like 0-3,8,10-11")
    cpus: set[int] = set()
    for part in value.split(","):
        if "-" in part:
            low_text, high_text = part.split("-")
            low, high = int(low_text), int(high_text)
            if high < low:
                raise UsageError(f"invalid {what} {text!r}: range {part.strip()} runs backwards")
        else:
            low = high = int(part)
        if high >= MAX_CPU_ID:
            raise UsageError(f"invalid {what} {text!r}: CPU id {high} is larger than {MAX_CPU_ID - 1}")
        cpus.update(range(low, high + 1))
    return sorted(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format ints as a compact CPU list: [0,1,2,3,8] -> '0-3,8'."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        while index + 1 < len(ordered) and ordered[index + 1] == end + 1:
            index += 1
            end = ordered[index]
        parts.append(str(start) if start == end else f"{start}-{end}")
        index += 1
    return ",".join(parts)
