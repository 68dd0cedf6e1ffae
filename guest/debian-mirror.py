#!/usr/bin/env python3
"""Print the Debian mirror this machine's apt uses (for guest/build-cloudinit-image.sh).

Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources and prints the first
URI that serves the Debian archive itself: a ``deb`` entry with component ``main`` whose suite is
a plain release name (not ``-security``/``-updates``) and whose URI path ends in ``/debian``.
So the image build uses the same mirror (or proxy) as the host, and no host name is committed.
Exit status 1 and a message on stderr when there is none.
"""

from __future__ import annotations

import glob
import sys


def _one_line_entries(text: str):
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):  # options like [arch=amd64 signed-by=...]
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts = parts[1:]
        if len(parts) >= 3:
            yield parts[0], [parts[1]], parts[2:]


def _deb822_entries(text: str):
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
            elif ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        for uri in fields.get("uris", "").split():
            yield uri, fields.get("suites", "").split(), fields.get("components", "").split()


def find_mirror(files: list[str] | None = None) -> str | None:
    """The first plain Debian archive URI configured for apt (in ``files``), or None."""
    if files is None:
        files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        entries = _deb822_entries(text) if path.endswith(".sources") else _one_line_entries(text)
        for uri, suites, components in entries:
            plain = [s for s in suites if "-" not in s and "/" not in s]
            if uri.rstrip("/").endswith("/debian") and plain and "main" in components:
                return uri.rstrip("/")
    return None


if __name__ == "__main__":
    mirror = find_mirror()
    if mirror is None:
        print("debian-mirror: no Debian archive found in /etc/apt/sources.list(.d)", file=sys.stderr)
        sys.exit(1)
    print(mirror)
