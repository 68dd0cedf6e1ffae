"""``slurm-vc plan`` through the real CLI entry point, on the recorded sysfs fixtures."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from slurm_vc.cli import main
from slurm_vc.commands.plan import add_allocation_arguments, plan_from_args

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
CRAY = str(SYSFS / "cray-xc30")
GIB = 1024**3


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compact_plan_on_the_cray(config_file, capsys):
    code, out, err = run(
        capsys,
        *("--config", str(config_file), "plan", "--topology", CRAY),
        *("--cpus", "0-23", "--mem", "64G", "--vcluster", "centos7-hpc"),
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "vcpus 24  memory 63G  pages 2M  sockets 2 cores 12 threads 1",
        "vcpupin 0-23:0-23",
        "emulatorpin 0-23",
        "cell 0 node 0  vcpus 0-11  memory 31.5G  16128 pages",
        "cell 1 node 1  vcpus 12-23  memory 31.5G  16128 pages",
    ]


def test_json_with_config_after_the_subcommand(config_file, capsys):
    code, out, err = run(
        capsys,
        *("plan", "--topology", str(SYSFS / "smt-2s4n"), "--cpus", "4-11,36-43", "--mem", "17G"),
        *("--vcluster", "tiny,pages=1G", "--config", str(config_file), "--json"),
    )
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["request"] == "tiny,pages=1G"
    assert data["vcpus"] == 8 and data["page_size"] == GIB
    assert data["vcpu_pins"] == {str(i): 4 + i for i in range(8)}
    assert data["emulator_cpus"] == list(range(36, 44))
    assert [c["host_node"] for c in data["cells"]] == [0, 1]
    assert data["hugepages"] == {"0": 8, "1": 8}


def test_config_from_the_environment(config_file, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_VC_CONFIG", str(config_file))
    code, out, _ = run(
        capsys, "plan", "--topology", CRAY, "--cpus", "0-3", "--mem", "8G", "--vcluster", "tiny"
    )
    assert code == 0 and out.startswith("vcpus 4  memory 7G")


def test_explain(config_file, capsys):
    code, out, _ = run(
        capsys,
        *("--config", str(config_file), "plan", "--topology", CRAY),
        *("--cpus", "8-13", "--mem", "8G", "--vcluster", "centos7-hpc,mem=6G", "--explain"),
    )
    assert code == 0
    assert out.startswith("Request: centos7-hpc,mem=6144M\nGuest: 6 vCPUs, 6G")
    assert "cell 0 <- host node 0: vCPUs 0-3, memory 4G = 2048 x 2M pages" in out
    assert "cell 1 <- host node 1: vCPUs 4-5, memory 2G = 1024 x 2M pages" in out
    assert "Why:" in out and "unequal vCPU counts (4, 2)" in out


def test_live_host_is_the_default_topology(config_file, capsys):
    code, out, err = run(
        capsys, "--config", str(config_file), "plan", "--cpus", "0", "--mem", "2G", "--vcluster", "tiny"
    )
    assert (code, err) == (0, "")
    assert out.startswith("vcpus 1  memory 1G")


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--cpus", "0-x", "--mem", "8G"], 2, "invalid --cpus '0-x'"),
        (["--cpus", "5-3", "--mem", "8G"], 2, "runs backwards"),
        (["--cpus", "", "--mem", "8G"], 2, "--cpus is empty"),
        (["--cpus", "0-30", "--mem", "8G"], 2, "CPU 24-30 not on the host"),
        (["--cpus", "0-3", "--mem", "12XB"], 2, "invalid --mem '12XB'"),
        (["--cpus", "0-3", "--mem=-1G"], 2, "invalid --mem '-1G'"),
        (["--cpus", "0-3", "--mem", "0"], 2, "must be greater than zero"),
        (["--cpus", "0-3", "--mem", "8G", "--vcluster", "nope"], 2, "unknown image 'nope'"),
        (["--cpus", "0-3", "--mem", "8G", "--vcluster", "tiny,vcpus=9"], 4, "only 4 physical cores"),
        (["--cpus", "0-3", "--mem", "1G"], 4, "no memory left for the guest"),
        (["--cpus", "0-3", "--mem", "8G", "--vcluster", "tiny,mem=8G"], 4, "no memory left for the host"),
        (["--cpus", "0-3", "--mem", "8G", "--topology", "/nonexistent"], 2, "is not a directory"),
    ],
)
def test_bad_input_one_line_and_exit_code(config_file, capsys, args, code, message):
    argv = ["--config", str(config_file), "plan", "--topology", CRAY, "--vcluster", "tiny", *args]
    got, out, err = run(capsys, *argv)
    assert got == code
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("slurm-vc plan: error: ") and message in err


def test_missing_config_is_exit_3(tmp_path, capsys):
    code, _, err = run(
        capsys,
        *("--config", str(tmp_path / "none.toml"), "plan", "--topology", CRAY),
        *("--cpus", "0", "--mem", "2G", "--vcluster", "tiny"),
    )
    assert code == 3 and "configuration file not found" in err


def test_malformed_topology_is_exit_6(config_file, tmp_path, capsys):
    broken = tmp_path / "host"
    shutil.copytree(CRAY, broken)
    bad = broken / "devices/system/cpu/cpu3/topology/core_id"
    bad.write_text("three\n")
    code, _, err = run(
        capsys,
        *("--config", str(config_file), "plan", "--topology", str(broken)),
        *("--cpus", "0-3", "--mem", "8G", "--vcluster", "tiny"),
    )
    assert code == 6 and str(bad) in err and len(err.strip().splitlines()) == 1


def test_json_and_explain_are_exclusive(config_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(
            [
                "plan",
                "--topology",
                CRAY,
                "--cpus",
                "0",
                "--mem",
                "2G",
                "--vcluster",
                "tiny",
                "--json",
                "--explain",
            ]
        )
    assert info.value.code == 2


def test_missing_required_argument(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "--topology", CRAY, "--mem", "2G", "--vcluster", "tiny"])
    assert info.value.code == 2
    assert "--cpus" in capsys.readouterr().err


def test_plan_from_args_is_reusable(config_file):
    parser = argparse.ArgumentParser()
    add_allocation_arguments(parser)
    parser.add_argument("--config")  # the CLI adds it to every subcommand
    args = parser.parse_args(
        [
            "--topology",
            CRAY,
            "--cpus",
            "0-23",
            "--mem",
            "64G",
            "--vcluster",
            "centos7-hpc",
            "--config",
            str(config_file),
        ]
    )
    config, request, topology, plan = plan_from_args(args)
    assert config.source == str(config_file)
    assert request.image == "centos7-hpc"
    assert len(topology.cpus) == 24
    assert plan.vcpu_pins == {i: i for i in range(24)}
