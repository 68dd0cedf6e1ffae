"""Parsing and formatting of sizes and CPU lists: pure functions shared by config, request, topology."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import UsageError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

# Used with fullmatch ("$" would allow a final "\n").  Case does not matter (64k, 4gb, 4GiB), but a
# "B"/"iB" needs the unit letter before it: "4B" is not 4 MiB.
_SIZE_RE = re.compile(r"([0-9]{1,15})(?:([KMGT])(?:IB|B)?)?", re.IGNORECASE)
_SIZE_UNITS = {"": MIB, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
SIZE_HELP = "a whole number with an optional unit K, M, G or T (e.g. 512M, 4G); no unit means MiB"


def shortened(text: str, limit: int = 40) -> str:
    """``repr(text)`` for a message, cut to ``limit`` characters when longer (saying how long it was)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def parse_size(text: str, *, what: str = "size", default_unit: str = "M") -> int:
    """Parse ``4G``/``512M``/``2048`` (MiB by default) into bytes.  Raises UsageError naming ``what``.

    Accepted: digits, then optionally a unit letter K, M, G or T, optionally followed by ``iB`` or
    ``B``, in either case (``4G``, ``4GiB``, ``4GB``, ``4gb``).  Units are binary (K = 1024).
    """
    value = str(text).strip()
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise UsageError(f"invalid {what} {shortened(str(text))}: expected {SIZE_HELP}")
    number, unit = int(match.group(1)), (match.group(2) or "").upper()
    if not unit:
        unit = default_unit.upper()
    size = number * _SIZE_UNITS[unit]
    if size <= 0:
        raise UsageError(f"invalid {what} {shortened(str(text))}: must be greater than zero")
    return size


def format_size(size: int) -> str:
    """Format bytes as the largest exact unit: 2097152 -> '2M', 1536 -> '1536K'."""
    for unit, factor in (("T", TIB), ("G", GIB), ("M", MIB), ("K", KIB)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{unit}"
    return f"{size}B"


# Used with fullmatch ("$" would allow a final "\n"); ASCII digits and blanks only (\d and \s take
# any Unicode digit or space, and int() would read '٣' as 3).  Ids are checked for length before
# int(), so a 5000-digit id gets the MAX_CPU_ID message rather than int()'s digit-limit ValueError.
_CPU_ID = r"[ \t]*[0-9]+[ \t]*"
_CPU_RANGE = rf"{_CPU_ID}(?:-{_CPU_ID})?"
_CPULIST_RE = re.compile(rf"{_CPU_RANGE}(?:,{_CPU_RANGE})*")
MAX_CPU_ID = 1 << 16
_MAX_CPU_ID_DIGITS = len(str(MAX_CPU_ID))


def parse_cpulist(text: str, *, what: str = "CPU list") -> list[int]:
    """Parse a kernel/Slurm CPU list (``0-3,8,10-11``) into sorted unique ints.

    An empty string is an empty list (sysfs writes empty lists for CPU-less NUMA nodes).
    """
    value = str(text).strip()
    if value == "":
        return []

    def invalid(reason: str) -> UsageError:  # the (shortened) text only when there is an error
        return UsageError(f"invalid {what} {shortened(str(text))}: {reason}")

    if not _CPULIST_RE.fullmatch(value):
        raise invalid("expected comma-separated ids or ranges like 0-3,8,10-11")

    def cpu_id(digits: str) -> int:
        digits = digits.strip(" \t")
        if len(digits.lstrip("0")) > _MAX_CPU_ID_DIGITS:
            raise invalid(f"CPU id {shortened(digits, 20)} is larger than {MAX_CPU_ID - 1}")
        return int(digits)

    cpus: set[int] = set()
    for part in value.split(","):
        if "-" in part:
            low_text, high_text = part.split("-")
            low, high = cpu_id(low_text), cpu_id(high_text)
            if high < low:
                raise invalid(f"range {part.strip()} runs backwards")
        else:
            low = high = cpu_id(part)
        if high >= MAX_CPU_ID:
            raise invalid(f"CPU id {high} is larger than {MAX_CPU_ID - 1}")
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
