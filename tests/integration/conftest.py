"""Shared fixtures for the integration tests: one private libvirtd for the whole session.

The daemon runs in its own mount namespace with its own sockets (see slurm_vc.sandbox.libvirtd), so
the tests never touch a system libvirtd and leave nothing running.  Tests that need it skip only when
it is clearly impossible (not root, libvirtd or QEMU not installed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Optional

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


@contextlib.contextmanager
def _running_libvirtd(name: str, netns: Optional[str] = None) -> Iterator:
    """A started PrivateLibvirtd in a fresh base dir; stopped and removed on exit."""
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    # Short base path: the socket path must fit in sun_path (108 bytes).
    base = tempfile.mkdtemp(prefix=LIBVIRT_BASE_PREFIX)
    os.chmod(base, 0o755)  # QEMU (libvirt-qemu) must reach the hugetlbfs mounts below it
    daemon = PrivateLibvirtd(name, base, netns=netns)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def private_libvirtd():
    """A running :class:`PrivateLibvirtd` for the session (stopped and removed at the end)."""
    reason = _libvirt_possible()
    if reason:
        pytest.skip(reason)
    with _running_libvirtd("lv") as daemon:
        yield daemon


@pytest.fixture(scope="session")
def libvirt_uri(private_libvirtd) -> str:
    """The URI of the session's private libvirtd (qemu+unix:///system?socket=...)."""
    return private_libvirtd.uri


# ---------------------------------------------------------------------------------------------
# A simulated node for lifecycle tests: a network namespace with a bridge, the private libvirtd
# running inside it, the tiny test guest and a site config pointing at all of that.

NODE_BRIDGE = "h5br0"  # inside the test namespace only
NODE_SUBNET = "10.231.0.0/16"  # private, specific to these tests, never on a host interface


def _run(*argv: str) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="session")
def node_netns():
    """A network namespace with an up bridge ``h5br0`` (removed at the end of the session)."""
    reason = _libvirt_possible()
    if reason:
        pytest.skip(reason)
    if not shutil.which("ip"):
        pytest.skip("iproute2 is not installed")
    name = f"h5it{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", name, "link", "add", NODE_BRIDGE, "type", "bridge")
        _run("ip", "-n", name, "link", "set", NODE_BRIDGE, "up")
        yield name
    finally:
        _run("ip", "netns", "del", name)


@pytest.fixture(scope="session")
def node_libvirtd(node_netns):
    """A private libvirtd inside the test node's network namespace."""
    with _running_libvirtd("node", netns=node_netns) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def qemu_visible_dir():
    """A session directory QEMU (which libvirt runs as libvirt-qemu) can traverse.

    pytest's own tmp directories are mode 0700, so guest files under them are unreadable to QEMU.
    """
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="vcit", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def qemu_tmp_path(qemu_visible_dir, request):
    """Like tmp_path, but QEMU can reach files in it."""
    import re

    # Short: the guest's UNIX sockets live below it and sun_path holds only 108 bytes.
    path = qemu_visible_dir / re.sub(r"[^A-Za-z0-9]", "", request.node.name)[-12:]
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_guest(qemu_visible_dir) -> dict:
    """kernel + initrd of the tiny test guest (guest/build-tiny-guest.sh)."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "guest" / "build-tiny-guest.sh"
    if not script.exists():
        pytest.fail(f"{script} is missing")
    out = qemu_visible_dir / "tiny-guest"
    result = subprocess.run(["sh", str(script), str(out)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the tiny guest failed:\n{result.stderr[-2000:]}")
    return {"kernel": str(out / "vmlinuz"), "initrd": str(out / "initrd.img")}


@pytest.fixture(scope="session")
def base_disk(qemu_visible_dir) -> str:
    """A small qcow2 'catalog image' (a data disk for the kernel-booted tiny guest), read-only."""
    import subprocess

    (qemu_visible_dir / "catalog").mkdir(mode=0o755)
    path = qemu_visible_dir / "catalog" / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    os.chmod(path, 0o444)
    return str(path)


@pytest.fixture
def node_config(node_libvirtd, tiny_guest, base_disk, qemu_tmp_path):
    """A site config for one simulated node: TCG guests, 2M pages, the test bridge and subnet."""
    from slurm_vc.config import config_from_mapping

    tmp_path = qemu_tmp_path
    secret = tmp_path / "job-key-secret"
    secret.write_bytes(os.urandom(32))
    guest = {"kernel": tiny_guest["kernel"], "initrd": tiny_guest["initrd"], "cmdline": "console=ttyS0"}
    return config_from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),  # not the machine's /run/slurm-vc
            "job_key_secret": str(secret),
            "host": {
                "libvirt_uri": node_libvirtd.uri,
                "libvirt_log_dir": str(node_libvirtd.qemu_log_dir),
                "domain_type": "qemu",
                "cpu_mode": "custom",
                "cpu_model": "qemu64",
                "hugepage_size": "2M",
                "reserved_memory": 0,
                "reserved_cores": 1,
            },
            "network": {"bridge": NODE_BRIDGE, "subnet": NODE_SUBNET, "isolation": "nftables"},
            "timeouts": {"ready": 180, "lock": 10},
            "images": {
                "tiny": {**guest, "seed": "both"},
                "tinydisk": {**guest, "seed": "both", "disk": base_disk},
                "never": {**guest, "seed": "cmdline", "readiness": {"serial_line": "NEVER-PRINTED"}},
                "tinyagent": {**guest, "seed": "cmdline", "readiness": {"probe": "agent"}},
            },
        },
        source="<integration test config>",
    )
