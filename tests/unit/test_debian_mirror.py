"""guest/debian-mirror.py: the Debian mirror the cloud-init image build takes from apt's sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("debian_mirror", REPO / "guest" / "debian-mirror.py")
debian_mirror = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(debian_mirror)

DEB822 = """\
Types: deb
# a comment
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://mirror.example.org/debian/
Suites: bookworm bookworm-updates
Components: main contrib
"""


def test_deb822_sources(tmp_path):
    path = tmp_path / "debian.sources"
    path.write_text(DEB822)
    assert debian_mirror.find_mirror([str(path)]) == "http://mirror.example.org/debian"


def test_one_line_sources_skip_other_archives(tmp_path):
    first = tmp_path / "sources.list"
    first.write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] https://packages.example.com/apt cloud-sdk-bookworm main\n"
        "deb http://security.example.org/debian-security bookworm-security main\n"
        "deb http://updates-only.example.org/debian bookworm-updates main\n"
        "deb [signed-by=/usr/share/keyrings/d.gpg] http://proxy.example.org:3142/debian bookworm main\n"
    )
    assert debian_mirror.find_mirror([str(first)]) == "http://proxy.example.org:3142/debian"


def test_disabled_or_missing(tmp_path):
    path = tmp_path / "x.sources"
    path.write_text(
        "Types: deb\nURIs: http://m.example.org/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    assert debian_mirror.find_mirror([str(path), str(tmp_path / "missing.list")]) is None
