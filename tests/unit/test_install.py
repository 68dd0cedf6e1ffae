"""``make install`` (what the Debian and RPM packages run): the layout and the interpreter lines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not Path(SYSTEM_PYTHON).exists(), reason="needs make and /usr/bin/python3"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``make install DESTDIR=...`` from a copy of the tree (the plugin is a stand-in file)."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copy(REPO / "Makefile", tree / "Makefile")
    for name in ("slurm_vc", "prolog", "epilog", "packaging"):
        shutil.copytree(REPO / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "spank").mkdir()
    (tree / "spank" / "slurm_vc.so").write_bytes(b"stand-in")
    root = tmp_path_factory.mktemp("root")
    done = subprocess.run(
        [
            "make",
            "-C",
            str(tree),
            "install",
            f"DESTDIR={root}",
            "PREFIX=/usr/local",
            f"PYTHON={SYSTEM_PYTHON}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_default_site_dir_is_on_the_interpreters_path(installed):
    """With PREFIX alone the package lands where the interpreter (isolated, as the scripts run it) looks."""
    paths = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-c", "import sys; print('\\n'.join(sys.path))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = [path for path in paths if (installed / path.lstrip("/") / "slurm_vc" / "cli.py").is_file()]
    assert found, f"slurm_vc is installed under none of {paths}"
    assert not list(installed.rglob("__pycache__"))


def test_every_entry_point_runs_python_isolated(installed):
    """A submitting user's PYTHONPATH (pydantic 1 from a module system) must not reach the validator."""
    cli = installed / "usr/local/bin/slurm-vc"
    assert cli.read_text().splitlines()[0] == f"#!{SYSTEM_PYTHON} -I"
    hooks = sorted((installed / "usr/local/libexec/slurm-vc").iterdir())
    assert [hook.name for hook in hooks] == [
        "slurm-vc-epilog",
        "slurm-vc-exec",
        "slurm-vc-prolog",
        "slurm-vc-task-prolog",
    ]
    for hook in hooks:
        text = hook.read_text()
        assert "@PYTHON@" not in text and f'PYTHON="{SYSTEM_PYTHON}"' in text
        assert 'exec "$PYTHON" -I -c ' in text
        assert subprocess.run(["sh", "-n", str(hook)]).returncode == 0


def test_installed_cli_body_runs_from_the_installed_package(installed):
    """The console script's body, run isolated against the installed copy: a real validate-request."""
    site = next(installed.rglob("slurm_vc/cli.py")).parent.parent
    cli = installed / "usr/local/bin/slurm-vc"
    runner = (
        "import sys; sys.path.insert(0, sys.argv[1]); script = sys.argv[2]; sys.argv = sys.argv[2:];"
        " exec(compile(open(script).read(), script, 'exec'))"
    )
    config = REPO / "packaging" / "vcluster.toml.example"
    done = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-I",
            "-c",
            runner,
            str(site),
            str(cli),
            "--config",
            str(config),
            "validate-request",
            "x",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "unknown image 'x'" in done.stderr, done.stderr
