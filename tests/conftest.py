"""Shared test helpers: a small site config written to a tmp file, and files shared with a group."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

MINIMAL_CONFIG = textwrap.dedent(
    """
    state_dir = "/tmp/slurm-vc-test-state"

    [host]
    domain_type = "qemu"
    hugepage_size = "2M"

    [images.centos7-hpc]
    disk = "/var/lib/slurm-vc/images/centos7-hpc.qcow2"

    [images.tiny]
    kernel = "/var/lib/slurm-vc/images/tiny/vmlinuz"
    initrd = "/var/lib/slurm-vc/images/tiny/initrd.img"
    seed = "both"
    """
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A valid minimal site config on disk."""
    path = tmp_path / "vcluster.toml"
    path.write_text(MINIMAL_CONFIG)
    return path


@pytest.fixture
def site_config(config_file: Path):
    from slurm_vc.config import load_config

    return load_config(str(config_file))


def is_root() -> bool:
    return os.geteuid() == 0


@pytest.fixture
def share_with_group():
    """``share(image, group)``: give ``image`` and its directory to root:``group``, readable (0640)
    and searchable (0750) by that group alone, as a site may share catalog images with QEMU's group
    instead of with everybody.  Needs root."""

    def share(image: Path, group: int) -> None:
        for path, mode in ((image, 0o640), (image.parent, 0o750)):
            os.chown(path, 0, group)
            os.chmod(path, mode)

    return share
