"""The CLI's shared behaviour: where --config may go, and how errors are reported."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from slurm_vc.cli import build_parser, main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "packaging" / "vcluster.toml.example")


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", EXAMPLE, "validate-request", "centos7-hpc"],
        ["validate-request", "--config", EXAMPLE, "centos7-hpc"],
        ["--config", "/nonexistent.toml", "validate-request", "--config", EXAMPLE, "centos7-hpc"],
    ],
)
def test_config_before_or_after_the_subcommand(argv, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_VC_CONFIG", raising=False)
    assert main(argv) == 0
    assert capsys.readouterr().out == "centos7-hpc\n"


def test_every_subcommand_takes_config():
    actions = build_parser()._actions
    [subcommands] = [action for action in actions if isinstance(action, argparse._SubParsersAction)]
    assert "validate-request" in subcommands.choices
    for name, parser in subcommands.choices.items():
        assert "--config" in parser._option_string_actions, name


def test_empty_config_path_is_exit_3(capsys):
    assert main(["--config", "", "validate-request", "centos7-hpc"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("slurm-vc validate-request: error: --config: the path is empty")
    assert len(err.splitlines()) == 1


def test_ssh_names_only_the_missing_guest(capsys):
    with pytest.raises(SystemExit) as info:
        main(["ssh"])
    assert info.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == "slurm-vc ssh: error: the following arguments are required: guest"
    )


def test_version(capsys):
    from slurm_vc import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"slurm-vc {__version__}\n"
