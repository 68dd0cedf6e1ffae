"""The sandbox cluster itself, through the ``slurm-vc sandbox`` CLI: up, jobs, status, exec, down, re-up.

These tests bring up their own sandbox (``vt<digits>``, a free name) next to the session one
(``ve<digits>``), which also shows two sandboxes coexist.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jobdir import job_workdir

from slurm_vc.sandbox import net, procs
from slurm_vc.sandbox.cluster import CRASH_ENV, DAEMON_COMMS, Sandbox
from slurm_vc.sandbox.layout import layout_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_sandbox")]

QEMU_COMM = "qemu-system-x86"  # /proc/PID/comm is cut at 15 characters
SLURM_VC = str(Path(sys.executable).parent / "slurm-vc")


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SLURM_VC, "sandbox", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


class SandboxCli:
    """``slurm-vc sandbox ACTION --name NAME ...`` for the test's own sandbox."""

    def __init__(self, name: str):
        self.name = name

    @property
    def layout(self):
        return layout_for(self.name)

    def cli(self, action: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return cli(action, "--name", self.name, *args, env=env)

    def exec(self, *argv: str, user: str | None = None) -> subprocess.CompletedProcess:
        extra = ["--user", user] if user else []
        return self.cli("exec", *extra, "--", *argv)

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.exec("scontrol", "show", "job", "-o", job_id, user="root")
            fields = dict(part.split("=", 1) for part in result.stdout.split() if "=" in part)
            state = fields.get("JobState", "")
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def leftovers(name: str) -> dict[str, list]:
    """Everything of sandbox ``name`` still present on the machine."""
    layout = layout_for(name)
    base = str(layout.base) + "/"
    deadline = time.monotonic() + 10  # killed daemons may linger a moment as they exit
    while True:
        found = {
            "processes": [ref.pid for ref in procs.pids_with_arg(base, (*DAEMON_COMMS, QEMU_COMM))],
            "netns": net.netns_list(layout.netns_prefix),
            "links": net.host_links(layout.link_prefix),
            "mounts": [line for line in Path("/proc/mounts").read_text().splitlines() if base in line],
            "files": sorted(p.name for p in layout.base.iterdir() if p.name != "log")
            if layout.base.exists()
            else [],
            "runtime dir": [str(layout.run_base)] if layout.run_base.exists() else [],
        }
        if not any(found.values()) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


DOMAIN_XML = """
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type><kernel>/boot/vmlinuz-{kernel}</kernel><cmdline>console=ttyS0</cmdline>
  </os>
  <devices>
    <interface type='bridge'><source bridge='{bridge}'/><model type='virtio'/></interface>
    <serial type='pty'/>
  </devices>
</domain>
"""


def start_test_domain(layout, node: str) -> str:
    """Start a throw-away guest (kernel only; it never needs to finish booting) on ``node``."""
    name = f"{layout.name}-test-{node}"
    kernel = sorted(p.name[len("vmlinuz-") :] for p in Path("/boot").glob("vmlinuz-*"))[-1]
    xml = DOMAIN_XML.format(name=name, kernel=kernel, bridge=layout.guest_bridge)
    result = subprocess.run(
        ["virsh", "-c", layout.libvirt_uri(node), "create", "/dev/stdin"],
        input=xml,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert procs.pids_with_arg(name, (QEMU_COMM,))
    tap = net.ip("-o", "link", "show", "master", layout.guest_bridge, netns=layout.netns(node)).stdout
    assert "vnet" in tap  # the guest's tap is on the node's guest bridge
    return name


@pytest.fixture
def sb(sandbox_names, request) -> SandboxCli:
    """The test's own sandbox (a free name for this session), down before and after the test.

    Its logs are kept only when a test of the session failed (for the post-mortem)."""
    name = sandbox_names("vt")
    Sandbox(name, quiet=True).down()
    yield SandboxCli(name)
    Sandbox(name, quiet=True).down(keep_logs=request.session.testsfailed > 0)


def test_up_jobs_status_exec_down(sb: SandboxCli) -> None:
    up = sb.cli("up", "--nodes", "3")
    assert up.returncode == 0, up.stderr
    assert f"SLURM_CONF={sb.layout.slurm_conf}" in up.stdout

    sinfo = sb.exec("sinfo", "-h", "-N", "-o", "%N %T")
    assert sinfo.returncode == 0, sinfo.stderr
    assert sorted(sinfo.stdout.split("\n")[:-1]) == ["node1 idle", "node2 idle", "node3 idle"]

    # A batch job on three nodes, as the unprivileged user; srun inside it prints every node's name.
    submit = sb.exec(
        "sbatch", "--parsable", "-N3", "-o", "/tmp/sandbox-test-%j.out", "--wrap", "id -un; srun hostname"
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip()
    try:
        assert sb.wait_job(job_id) == "COMPLETED"
        output = Path(f"/tmp/sandbox-test-{job_id}.out")
        lines = output.read_text().split()
        assert lines[0] == "vcuser"
        assert sorted(lines[1:]) == ["node1", "node2", "node3"]
        assert output.stat().st_uid == int(sb.exec("id", "-u").stdout)
    finally:
        Path(f"/tmp/sandbox-test-{job_id}.out").unlink(missing_ok=True)

    # srun from the login side: labels, and the task's exit code reaches the caller.
    run = sb.exec("srun", "-N3", "-l", "hostname")
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.split("\n")[:-1]) == ["0: node1", "1: node2", "2: node3"]
    assert sb.exec("srun", "-N1", "sh", "-c", "exit 3").returncode == 3
    assert sb.exec("sh", "-c", "exit 7").returncode == 7

    # exec runs as the job user by default, as root on request, with the sandbox's commands on PATH.
    assert sb.exec("id", "-un").stdout.strip() == "vcuser"
    assert sb.exec("id", "-un", user="root").stdout.strip() == "root"
    assert sb.exec("sh", "-c", "command -v slurm-vc").stdout.strip() == str(sb.layout.launcher)
    # ... and slurm-vc runs for the job user (the SPANK validator uses the same launcher).
    validate = sb.exec("slurm-vc", "validate-request", "tiny")
    assert validate.returncode == 0, validate.stderr
    assert sb.exec("slurm-vc", "validate-request", "no-such-image").returncode == 2
    assert sb.exec("squeue", "-h").returncode == 0
    # A command that does not exist (here: an option put after the --) is one clear line, exit 2.
    missing = sb.exec("--user", "root", "id")
    assert missing.returncode == 2
    assert "cannot run '--user' as vcuser" in missing.stderr and "Traceback" not in missing.stderr

    status = sb.cli("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["up"] is True
    assert info["nodes"] == {"node1": "idle", "node2": "idle", "node3": "idle"}
    roles = set(info["daemons"])
    assert {"munged", "slurmctld", "slurmd-node1", "slurmd-node3", "libvirtd-node2"} <= roles
    assert all(daemon["alive"] for daemon in info["daemons"].values())
    layout = sb.layout
    assert info["links"][layout.fabric_bridge]["mtu"] == 9000
    assert info["links"][f"node2:{layout.guest_bridge}"]["exists"] is True
    # Each node's libvirtd answers on its own socket.
    for node in ("node1", "node3"):
        virsh = subprocess.run(
            ["virsh", "-c", layout.libvirt_uri(node), "list", "--all"], capture_output=True
        )
        assert virsh.returncode == 0, virsh.stderr

    # A guest running on node1's libvirtd, attached to the node's guest bridge: down must destroy it
    # (through libvirt, so its cgroup directories go too).
    domain = start_test_domain(layout, "node1")

    down = sb.cli("down")
    assert down.returncode == 0, down.stderr
    assert not procs.pids_with_arg(domain, (QEMU_COMM,))
    assert not list(Path("/sys/fs/cgroup").glob(f"*/machine/*{domain}*"))
    assert leftovers(sb.name) == {
        "processes": [],
        "netns": [],
        "links": [],
        "mounts": [],
        "files": [],
        "runtime dir": [],
    }
    assert sb.cli("status").returncode != 0
    # down is idempotent.
    assert sb.cli("down").returncode == 0


def test_guest_bridges_are_joined_across_nodes(sb: SandboxCli) -> None:
    """Each node's guest bridge has its host-block address; the nodes reach each other through the fabric."""
    assert sb.cli("up", "--nodes", "2", "--no-libvirt").returncode == 0
    layout = sb.layout
    shown = net.ip("-o", "-4", "addr", "show", "dev", layout.guest_bridge, netns=layout.netns("node2")).stdout
    assert layout.guest_host_address(2) in shown
    ping = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{layout.netns('node1')}",
            "busybox",
            "ping",
            "-c1",
            "-W5",
            "-s",
            "8000",  # a jumbo frame: the bridges and veths carry MTU 9000
            layout.guest_host_address(2).split("/")[0],
        ],
        capture_output=True,
        text=True,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sb.cli("down").returncode == 0
    assert not any(leftovers(sb.name).values())


def test_down_with_running_jobs(sb: SandboxCli) -> None:
    """Running and pending jobs are cancelled and their processes gone, whatever they were doing."""
    assert sb.cli("up", "--nodes", "2", "--no-libvirt").returncode == 0
    running = sb.exec("sbatch", "--parsable", "-N2", "-o", "/dev/null", "--wrap", "srun sleep 300")
    pending = sb.exec("sbatch", "--parsable", "-N2", "-o", "/dev/null", "--wrap", "sleep 300")
    assert running.returncode == 0 and pending.returncode == 0, running.stderr + pending.stderr
    layout = sb.layout

    def on_nodes() -> list[procs.ProcRef]:
        return [
            ref
            for node in ("node1", "node2")
            for ref in procs.pids_in_netns(f"/run/netns/{layout.netns(node)}")
        ]

    def comms(refs: list[procs.ProcRef]) -> list[str]:
        names = []
        for ref in refs:
            try:
                names.append(Path(f"/proc/{ref.pid}/comm").read_text().strip())
            except OSError:
                continue
        return names

    deadline = time.monotonic() + 60
    while comms(on_nodes()).count("sleep") < 2:  # the srun step's task on both nodes
        assert time.monotonic() < deadline, f"job never started: {comms(on_nodes())}"
        time.sleep(0.2)
    before = on_nodes()
    assert {"slurmd", "slurmstepd", "sleep"} <= set(comms(before))
    assert sb.cli("down").returncode == 0
    assert not any(leftovers(sb.name).values())
    assert not [ref for ref in before if procs.alive(ref)]


def test_down_releases_hugepages_left_in_ledgers(sb: SandboxCli) -> None:
    """A reservation no epilog released (e.g. slurmd died) is released at down, exactly per its ledger."""
    from slurm_vc.config import load_config
    from slurm_vc.hugepages import HugepagePool

    assert sb.cli("up", "--nodes", "1", "--no-libvirt").returncode == 0
    pool = HugepagePool.from_config(load_config(str(sb.layout.node_config("node1"))))
    page = 2 * 1024 * 1024
    pool.reserve("4242", page, {0: 2})
    ledger = pool.ledger("4242")
    assert ledger is not None and ledger.nodes[0].added >= 2
    down = sb.cli("down")
    assert down.returncode == 0, down.stderr
    assert "releasing hugepages of job 4242 on node1" in down.stderr
    assert pool.ledger("4242") is None
    assert not any(leftovers(sb.name).values())


@pytest.mark.parametrize("step", ["network", "slurmctld", "slurmd"])
def test_up_after_interrupted_up(sb: SandboxCli, step: str) -> None:
    crashed = sb.cli("up", "--nodes", "2", env={**os.environ, CRASH_ENV: step})
    assert crashed.returncode == -9  # SIGKILLed mid-way: no cleanup ran
    assert net.netns_list(sb.layout.netns_prefix)  # it really left things behind

    again = sb.cli("up", "--nodes", "2")
    assert again.returncode == 0, again.stderr
    assert sb.exec("srun", "-N2", "hostname").returncode == 0
    assert sb.cli("down").returncode == 0
    assert not any(leftovers(sb.name).values())


def test_down_after_interrupted_down(sb: SandboxCli) -> None:
    assert sb.cli("up", "--nodes", "2").returncode == 0
    crashed = sb.cli("down", env={**os.environ, CRASH_ENV: "down-libvirt"})
    assert crashed.returncode == -9  # killed after the guests and libvirtds, before namespaces and Slurm
    assert net.netns_list(sb.layout.netns_prefix)
    assert sb.cli("down").returncode == 0
    assert not any(leftovers(sb.name).values())


def test_down_after_interrupted_up_and_lost_state(sb: SandboxCli) -> None:
    """Even without state.json, down finds the daemons, namespaces and links by their names."""
    crashed = sb.cli("up", "--nodes", "2", env={**os.environ, CRASH_ENV: "slurmd"})
    assert crashed.returncode == -9
    sb.layout.state_file.unlink()
    assert sb.cli("down").returncode == 0
    assert not any(leftovers(sb.name).values())


def test_session_fixture_runs_jobs(sandbox) -> None:
    """The shared fixture other e2e tests use: submit, wait, read the output."""
    assert sandbox.nodes == ["node1", "node2", "node3"]
    assert all(state == "idle" for state in sandbox.node_states().values())
    job = sandbox.sbatch("-N3", "--wrap", "srun hostname")
    assert sandbox.wait_job(job) == "COMPLETED"
    assert sorted(sandbox.job_output(job).split()) == sandbox.nodes
    # the output lands in the session's own directory, not in one shared with earlier sessions
    assert Path(sandbox.job_info(job)["StdOut"]) == sandbox.workdir / f"slurm-{job}.out"
    assert sandbox.workdir.is_relative_to(sandbox.base)
    assert sandbox.exec("id -un").stdout.strip() == sandbox.user
    assert sandbox.exec(["id", "-u"], user="root").stdout.strip() == "0"


def test_job_workdir_drops_an_earlier_sessions_output(tmp_path) -> None:
    """Job ids repeat between sessions of the same sandbox name: an earlier session's slurm-<id>.out
    must not be there to be read as this session's (a requeue test once read a stale "RAN" line)."""
    stale = tmp_path / "jobs" / "slurm-4200010.out"
    stale.parent.mkdir()
    stale.write_text("RAN restart=1\n")
    workdir = job_workdir(tmp_path, "nobody")
    assert workdir == stale.parent
    assert list(workdir.iterdir()) == []
    assert workdir.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert workdir.stat().st_mode & 0o777 == 0o755
