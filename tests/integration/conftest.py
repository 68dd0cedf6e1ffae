"""Shared fixtures for the integration tests: one private libvirtd for the whole session.

The daemon runs in its own mount namespace with its own sockets (see slurm_vc.sandbox.libvirtd), so
the tests never touch a system libvirtd and leave nothing running.  Tests that need it skip only when
it is clearly impossible (not root, libvirtd or QEMU not installed).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

LIBVIRT_BASE_PREFIX = "/tmp/slurm-vc-it-"


def _libvirt_possible() -> str | None:
    """Why a private libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (private libvirtd, hugetlbfs mounts)"
    for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "mount"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed"
    return None


@pytest.fixture(scope="session")
def private_libvirtd():
    """A running :class:`PrivateLibvirtd` for the session (stopped and removed at the end)."""
    reason = _libvirt_possible()
    if reason:
        pytest.skip(reason)
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    # Short base path: the socket path must fit in sun_path (108 bytes).
    base = tempfile.mkdtemp(prefix=LIBVIRT_BASE_PREFIX)
    daemon = PrivateLibvirtd("lv", base)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirt_uri(private_libvirtd) -> str:
    """The URI of the session's private libvirtd (qemu+unix:///system?socket=...)."""
    return private_libvirtd.uri
