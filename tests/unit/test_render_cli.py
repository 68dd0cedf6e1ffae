"""``slurm-vc render``: the dry run from recorded hosts, its arguments and its errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from slurm_vc.cli import main
from slurm_vc.domain import schema_errors

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "packaging" / "vcluster.toml.example")
CRAY = str(REPO / "tests" / "fixtures" / "sysfs" / "cray-xc30")
SMT = str(REPO / "tests" / "fixtures" / "sysfs" / "smt-2s4n")
CRAY_WHOLE_NODE = ["--topology", CRAY, "--cpus", "0-23", "--mem", "62G", "--vcluster", "centos7-hpc"]


def render(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cray_whole_node_prints_valid_paper_xml(capsys):
    code, out, err = render(capsys, "render", *CRAY_WHOLE_NODE, "--config", EXAMPLE)
    assert code == 0, err
    root = etree.fromstring(out.encode())
    assert root.tag == "domain" and root.get("type") == "kvm"  # the example config's domain type
    assert root.findtext("vcpu") == "24"
    assert [p.get("cpuset") for p in root.findall("cputune/vcpupin")] == [str(i) for i in range(24)]
    assert [c.get("cpus") for c in root.findall("cpu/numa/cell")] == ["0-11", "12-23"]
    assert [p.get("nodeset") for p in root.findall("memoryBacking/hugepages/page")] == ["0", "1"]
    if shutil.which("virt-xml-validate"):
        assert schema_errors(out) is None


def test_global_config_flag_and_env_var_work_too(capsys, monkeypatch):
    code_global, out_global, _ = render(capsys, "--config", EXAMPLE, "render", *CRAY_WHOLE_NODE)
    monkeypatch.setenv("SLURM_VC_CONFIG", EXAMPLE)
    code_env, out_env, _ = render(capsys, "render", *CRAY_WHOLE_NODE)
    assert code_global == code_env == 0
    assert out_global == out_env


def test_placeholder_paths_live_under_state_dir_and_name_job_options(capsys, config_file):
    code, out, err = render(
        capsys, "render", *CRAY_WHOLE_NODE, "--config", str(config_file), "--name", "myguest", "--job", "1234"
    )
    assert code == 0, err
    root = etree.fromstring(out.encode())
    assert root.findtext("name") == "myguest"
    assert root.get("type") == "qemu"  # from the test config
    job_dir = "/tmp/slurm-vc-test-state/jobs/1234/"
    paths = [d.find("source").get("file") for d in root.findall("devices/disk")]
    paths += [root.find("devices/serial/log").get("file")]
    paths += [c.find("source").get("path") for c in root.findall("devices/channel")]
    assert len(paths) == 5 and all(p.startswith(job_dir) for p in paths), paths
    assert root.find("devices/interface/target").get("dev") == "vc1234t0"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:00:00:01"
    assert root.find("devices/interface/source").get("bridge") == "vcbr0"


def test_default_name_follows_hostname_format(capsys):
    code, out, _ = render(capsys, "render", *CRAY_WHOLE_NODE, "--config", EXAMPLE, "--job", "77")
    assert code == 0
    assert etree.fromstring(out.encode()).findtext("name") == "vc77-0"


def test_direct_kernel_image_has_kernel_and_seed_but_no_overlay(capsys, config_file):
    code, out, err = render(
        capsys, "render", "--topology", SMT, "--cpus", "0-7", "--mem", "8G", "--vcluster", "tiny",
        "--config", str(config_file),
    )  # fmt: skip
    assert code == 0, err
    root = etree.fromstring(out.encode())
    assert root.findtext("os/kernel") == "/var/lib/slurm-vc/images/tiny/vmlinuz"
    assert [d.find("target").get("dev") for d in root.findall("devices/disk")] == ["vdb"]  # seed only


def test_render_agrees_with_plan(capsys, config_file):
    args = ["--topology", SMT, "--cpus", "0-5,32-37", "--mem", "16G", "--vcluster", "centos7-hpc,pages=1G"]
    assert main(["--config", str(config_file), "plan", *args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    code, out, err = render(capsys, "--config", str(config_file), "render", *args, "--validate")
    assert code == 0, err
    root = etree.fromstring(out.encode())
    assert int(root.findtext("vcpu")) == plan["vcpus"]
    assert int(root.findtext("memory")) * 1024 == plan["memory"]
    pins = {int(p.get("vcpu")): int(p.get("cpuset")) for p in root.findall("cputune/vcpupin")}
    assert pins == {int(k): v for k, v in plan["vcpu_pins"].items()}
    assert {p.get("size") for p in root.findall("memoryBacking/hugepages/page")} == {"1048576"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cpus", "0-99"], "not on the host"),
        (["--cpus", "3-1"], "runs backwards"),
        (["--mem", "12XB"], "invalid --mem"),
        (["--mem=-1G"], "invalid --mem"),
        (["--vcluster", "nope"], "unknown image 'nope'"),
        (["--vcluster", "centos7-hpc,vcpus=99"], "vcpus=99"),
        (["--name", "a/b"], "--name 'a/b'"),
        (["--job", "x y"], "--job 'x y'"),
        (["--topology", "/nonexistent-sysfs"], "not a directory"),
        (["--name", "vc1\n"], "--name 'vc1\\n'"),  # "$" matched before a final newline
        (["--job", "7\n"], "--job '7\\n'"),
        (["--cpus", "０-１"], "invalid --cpus '０-１'"),
        (["--cpus", "٠"], "invalid --cpus"),
        (["--cpus", "0," + "1" * 5000], "is larger than 65535"),
        (["--mem", "4B"], "invalid --mem '4B'"),
        (["--mem", "4iB"], "invalid --mem '4iB'"),
        (["--vcluster", ","], "',' does not start with an image name"),
        (["--vcluster", "centos7-hpc,mem=4K"], "whole number of MiB"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(capsys, extra, message):
    args = dict(zip(CRAY_WHOLE_NODE[::2], CRAY_WHOLE_NODE[1::2]))
    argv = ["render", "--config", EXAMPLE]
    for key, value in args.items():
        if not any(e == key or e.startswith(key + "=") for e in extra):
            argv += [key, value]
    code, out, err = render(capsys, *argv, *extra)
    assert code in (2, 4), err
    assert out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("relative", ["devices/system/node", "devices/system/node/node0/hugepages"])
def test_broken_topology_is_a_host_error(capsys, tmp_path, relative):
    """A file where sysfs has a directory was 'internal error: NotADirectoryError' (exit 1)."""
    topology = tmp_path / "vm-2core"
    shutil.copytree(REPO / "tests" / "fixtures" / "sysfs" / "vm-2core", topology)
    shutil.rmtree(topology / relative)
    (topology / relative).write_text("x\n")
    code, out, err = render(
        capsys, "render", "--topology", str(topology), "--cpus", "0-1", "--mem", "3G",
        "--vcluster", "centos7-hpc", "--config", EXAMPLE,
    )  # fmt: skip
    assert code == 6 and out == ""
    assert f"{topology / relative}: cannot list the directory: Not a directory" in err
    assert err.count("\n") == 1 and "internal error" not in err


def test_missing_config_is_a_config_error(capsys, tmp_path):
    code, out, err = render(capsys, "render", *CRAY_WHOLE_NODE, "--config", str(tmp_path / "none.toml"))
    assert code == 3 and "not found" in err and out == ""


def test_runs_without_libvirt_python(tmp_path):
    """A dry run on a laptop: libvirt-python absent must not matter."""
    code = (
        "import sys; sys.modules['libvirt'] = None\n"
        "from slurm_vc.cli import main\n"
        f"sys.exit(main(['render', *{CRAY_WHOLE_NODE!r}, '--config', {EXAMPLE!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<domain")
