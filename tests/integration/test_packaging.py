"""The Debian package builds with dpkg-buildpackage and ships the right files; the RPM spec builds a
source RPM and passes rpmlint.  Both run on a copy of the committed tree."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"

pytestmark = pytest.mark.integration


def _tracked_tree(dest: Path) -> Path:
    """Copy the files git tracks (plus untracked, not ignored ones) into dest/slurm-vc-VERSION."""
    files = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    root = dest / f"slurm-vc-{VERSION}"
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        pytest.skip(f"missing tools {missing}: run scripts/install-deps.sh")


def test_debian_package_builds_with_expected_files(tmp_path):
    _need("dpkg-buildpackage", "dpkg-deb")
    root = _tracked_tree(tmp_path)
    shutil.copytree(root / "packaging" / "debian", root / "debian")
    build = subprocess.run(
        ["dpkg-buildpackage", "-us", "-uc", "-b", "-d"], cwd=root, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    debs = list(tmp_path.glob("slurm-vc_*.deb"))
    assert len(debs) == 1
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(debs[0])], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    multiarch = subprocess.run(
        ["dpkg-architecture", "-qDEB_HOST_MULTIARCH"], capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = {
        "/usr/bin/slurm-vc",
        "/usr/lib/python3/dist-packages/slurm_vc/cli.py",
        "/usr/lib/python3/dist-packages/slurm_vc/config.py",
        f"/usr/lib/{multiarch}/slurm-wlm/slurm_vc.so",
        "/usr/libexec/slurm-vc/slurm-vc-prolog",
        "/usr/libexec/slurm-vc/slurm-vc-epilog",
        "/usr/libexec/slurm-vc/slurm-vc-task-prolog",
        "/lib/systemd/system/slurm-vc-gc.timer",
        "/lib/systemd/system/slurm-vc-gc.service",
        "/usr/share/slurm-vc/vcluster.toml.example",
        "/usr/share/slurm-vc/plugstack.conf.example",
    }
    assert expected <= paths, sorted(expected - paths)
    assert not any("__pycache__" in path for path in paths)
    # the installed launcher points at the system Python, not at a build venv
    extract = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(extract)], check=True)
    # ... isolated (-I): a submitting user's PYTHONPATH/PYTHONHOME must not reach the validator
    assert (extract / "usr/bin/slurm-vc").read_text().splitlines()[0] == "#!/usr/bin/python3 -I"
    for hook in ("slurm-vc-prolog", "slurm-vc-epilog", "slurm-vc-task-prolog"):
        assert "@PYTHON@" not in (extract / "usr/libexec/slurm-vc" / hook).read_text()


def test_rpm_spec_builds_srpm_and_passes_rpmlint(tmp_path):
    _need("rpmbuild", "rpmlint")
    root = _tracked_tree(tmp_path)
    topdir = tmp_path / "rpmbuild"
    (topdir / "SOURCES").mkdir(parents=True)
    with tarfile.open(topdir / "SOURCES" / f"slurm-vc-{VERSION}.tar.gz", "w:gz") as tar:
        tar.add(root, arcname=root.name)
    spec = REPO / "packaging" / "rpm" / "slurm-vc.spec"
    build = subprocess.run(
        ["rpmbuild", "-bs", "--define", f"_topdir {topdir}", str(spec)], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    srpms = list((topdir / "SRPMS").glob("slurm-vc-*.src.rpm"))
    assert len(srpms) == 1
    rcfile = REPO / "packaging" / "rpm" / "slurm-vc.rpmlintrc"
    # --ignore-unused-rpmlintrc: the rc file filters spelling errors that only a dictionary-equipped
    # rpmlint reports (Debian 13's); Debian 12's finds no dictionary and would call them unused.
    lint = subprocess.run(
        ["rpmlint", "--ignore-unused-rpmlintrc", "-r", str(rcfile), str(spec), str(srpms[0])],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert " 0 errors" in lint.stdout
