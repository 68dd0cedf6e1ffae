"""Text from outside (a guest's console, a tool's stderr) made safe to show in messages.

A guest's console output is its owner's text: it reaches the job's Comment (``scontrol show job``,
read by admins), the drain reason, the prolog's log and the job's output.  Terminal escape
sequences in it could retitle or rewrite an admin's terminal, and one endless line could make a
message megabytes long.
"""

from __future__ import annotations

import re

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and the other ESC sequences: intermediates
# then one final byte (ESC c resets the terminal, ESC ( B selects a character set).
_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
# C0 controls except tab and newline, DEL, and C1 controls (8-bit CSI etc.).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` without terminal escape sequences; other control characters become ``?``.

    Newlines and tabs stay; a carriage return ends a line, as a terminal shows it.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("?", _ESCAPE_SEQUENCE.sub("", text))


def clip_lines(text: str, width: int) -> str:
    """Each line of ``text`` cut to ``width`` characters (a cut line ends with ``...``)."""
    return "\n".join(line if len(line) <= width else line[: width - 3] + "..." for line in text.split("\n"))


__all__ = ["clip_lines", "printable"]
