"""slurm_vc.slurm: host lists, job facts from recorded Slurm environments, scontrol parsing, CLI calls.

Fixtures in tests/fixtures/slurm/: ``*-22.05-*`` were recorded from Slurm 22.05.8 (Debian 12) in a
two-node test cluster; ``*-24.11*`` from Slurm 24.11.5 (Debian 13) in a two-node ``slurm-vc sandbox``
running a ``--vcluster`` job (``sbatch -N2 --mem=1024 --comment "hello there x=1"``; each node may
allocate only its own host CPU, hence CPU_IDs 0 and 1).  Shapes no recording has (comma lists inside
brackets, ``GRES_IDX=``) are inline texts, marked as such.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from slurm_vc import slurm
from slurm_vc.errors import SlurmError
from slurm_vc.topology import Cpu, HostTopology, NumaNode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def read_env(name: str) -> dict[str, str]:
    env = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, _, value = line.partition("=")
        env[key] = value
    return env


# --------------------------------------------------------------------------- host lists


@pytest.mark.parametrize(
    "text, names",
    [
        ("n1", ["n1"]),
        ("h7n[1-2]", ["h7n1", "h7n2"]),
        ("n[1-3,5]", ["n1", "n2", "n3", "n5"]),
        ("x[001-003]", ["x001", "x002", "x003"]),
        ("x[08-11]", ["x08", "x09", "x10", "x11"]),
        ("gv[21,139],gw007", ["gv21", "gv139", "gw007"]),
        ("a[1-2]-ib", ["a1-ib", "a2-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("b,a", ["b", "a"]),  # Slurm's order is kept, not sorted
        ("", []),
    ],
)
def test_expand_hostlist(text, names):
    assert slurm.expand_hostlist(text) == names


@pytest.mark.parametrize("text", ["n[1-3", "n1-3]", "n[3-1]", "n[a-b]", "n1,,n2", "n[1-]"])
def test_expand_hostlist_rejects_malformed(text):
    with pytest.raises(SlurmError, match="host list"):
        slurm.expand_hostlist(text)


def test_cpus_per_node():
    assert slurm.parse_cpus_per_node("4(x2),2", ["a", "b", "c"]) == {"a": 4, "b": 4, "c": 2}
    assert slurm.parse_cpus_per_node("1(x2)", ["a", "b"]) == {"a": 1, "b": 1}
    with pytest.raises(SlurmError, match="describe 1 nodes"):
        slurm.parse_cpus_per_node("4", ["a", "b"])
    with pytest.raises(SlurmError, match="malformed"):
        slurm.parse_cpus_per_node("4(y2)", ["a", "b"])


# --------------------------------------------------------------------------- environments


def test_facts_from_recorded_prolog_env():
    facts = slurm.job_facts_from_env(read_env("prolog-env-22.05.txt"))
    assert facts.job_id == 1
    assert facts.user == "cloudsdk"
    assert (facts.uid, facts.gid) == (1000, 1000)
    assert facts.node == "h7n1"
    assert facts.nodes == ("h7n1", "h7n2")
    assert facts.node_index == 0
    assert facts.vcluster == "good,vcpus=2"  # SPANK_VCLUSTER from spank_job_control_setenv
    assert facts.cpus_per_node == {"h7n1": 1, "h7n2": 1}
    assert facts.restart_count == 0


def test_facts_from_recorded_task_env():
    facts = slurm.job_facts_from_env(read_env("batch-task-env-22.05.txt"))
    assert facts.job_id == 2
    assert facts.nodes == ("h7n1", "h7n2")
    assert facts.vcluster == "good,vcpus=2"  # tasks see SLURM_SPANK_VCLUSTER


def test_facts_from_recorded_24_11_prolog_env():
    env = read_env("prolog-env-24.11.txt")
    # 24.11 gives the prolog SLURM_JOB_NODELIST as well; 22.05 gave only SLURM_NODELIST.
    assert env["SLURM_JOB_NODELIST"] == env["SLURM_NODELIST"] == "node[1-2]"
    facts = slurm.job_facts_from_env(env)
    assert facts.job_id == 200001
    assert facts.user == "vcuser"
    assert (facts.uid, facts.gid) == (1000, 1000)
    assert facts.node == "node2"
    assert facts.nodes == ("node1", "node2")
    assert facts.node_index == 1
    assert facts.vcluster == "centos7-hpc"  # SPANK_VCLUSTER, as in 22.05
    assert facts.cpus_per_node == {"node1": 1, "node2": 1}
    assert facts.restart_count == 0


def test_facts_from_recorded_24_11_task_env():
    env = read_env("batch-task-env-24.11.txt")
    assert env["SLURM_SCRIPT_CONTEXT"] == "prolog_task"
    facts = slurm.job_facts_from_env(env)
    assert facts.job_id == 200001
    assert facts.node == "node1"
    assert facts.nodes == ("node1", "node2")
    assert facts.vcluster == "centos7-hpc"  # tasks see SLURM_SPANK_VCLUSTER


def test_facts_without_vcluster_and_missing_pieces():
    env = read_env("prolog-env-22.05.txt")
    for key in ("SPANK_VCLUSTER", "SPANK__SLURM_SPANK_OPTION_vcluster_vcluster"):
        env.pop(key)
    assert slurm.job_facts_from_env(env).vcluster is None
    broken = dict(env)
    broken.pop("SLURM_JOB_ID")
    broken.pop("SLURM_JOBID")
    with pytest.raises(SlurmError, match="SLURM_JOB_ID"):
        slurm.job_facts_from_env(broken)
    elsewhere = dict(env, SLURMD_NODENAME="other")
    with pytest.raises(SlurmError, match="not in job 1's node list"):
        slurm.job_facts_from_env(elsewhere)


def test_pseudo_steps():
    assert slurm.step_is_pseudo("batch")
    assert slurm.step_is_pseudo(str(0xFFFFFFFB))
    assert not slurm.step_is_pseudo("0")
    assert not slurm.step_is_pseudo("17")


# --------------------------------------------------------------------------- scontrol show job -d


def test_allocation_22_05_uniform():
    text = (FIXTURES / "scontrol-show-job-d-22.05-uniform.txt").read_text()
    for node in ("h7n1", "h7n2"):
        allocation = slurm.allocation_from_job_detail(text, node)
        assert allocation.cpu_ids == (0,)
        assert allocation.memory == 500 * 1024 * 1024


def test_allocation_22_05_uneven():
    text = (FIXTURES / "scontrol-show-job-d-22.05-uneven.txt").read_text()
    assert slurm.allocation_from_job_detail(text, "h7n1") == slurm.Allocation((0, 1), 600 * 1024 * 1024)
    assert slurm.allocation_from_job_detail(text, "h7n2") == slurm.Allocation((0,), 300 * 1024 * 1024)
    with pytest.raises(SlurmError, match="no CPU_IDs line for node h7n3"):
        slurm.allocation_from_job_detail(text, "h7n3")


def test_allocation_24_11_recorded():
    text = (FIXTURES / "scontrol-show-job-d-24.11.txt").read_text()
    assert "AllocTRES=" in text and "\n   TRES=" not in text  # 24.11 splits TRES into Req/Alloc
    assert slurm.allocation_from_job_detail(text, "node1") == slurm.Allocation((0,), 1024 * 1024 * 1024)
    assert slurm.allocation_from_job_detail(text, "node2") == slurm.Allocation((1,), 1024 * 1024 * 1024)
    with pytest.raises(SlurmError, match="no CPU_IDs line for node node3"):
        slurm.allocation_from_job_detail(text, "node3")


# Not recorded: comma lists inside brackets and GRES_IDX= (later releases, GRES jobs).
BRACKETED_DETAIL = """\
   JOB_GRES=(null)
     Nodes=gv[21,139] CPU_IDs=0-5 Mem=4096 GRES_IDX=
     Nodes=gw007 CPU_IDs=2-3,12-13 Mem=4096 GRES_IDX=
   MinCPUsNode=1 MinMemoryNode=4G MinTmpDiskNode=0
   Comment=slurm-vc: node gw007: unknown image 'x' (a = b)
"""


def test_allocation_bracketed_node_lists():
    assert slurm.allocation_from_job_detail(BRACKETED_DETAIL, "gv139").cpu_ids == (0, 1, 2, 3, 4, 5)
    gw = slurm.allocation_from_job_detail(BRACKETED_DETAIL, "gw007")
    assert gw.cpu_ids == (2, 3, 12, 13)
    assert gw.memory == 4096 * 1024 * 1024


def test_allocation_without_memory_tracking():
    text = "   JOB_GRES=(null)\n     Nodes=crush CPU_IDs=0-1 Mem=0 GRES=\n"
    assert slurm.allocation_from_job_detail(text, "crush") == slurm.Allocation((0, 1), None)


def test_job_fields():
    uniform = (FIXTURES / "scontrol-show-job-d-22.05-uniform.txt").read_text()
    assert slurm.job_field(uniform, "Comment") == "hello there x=1"
    assert slurm.job_field(uniform, "JobState") == "RUNNING"
    assert slurm.job_field(uniform, "BatchHost") == "h7n1"
    recorded = (FIXTURES / "scontrol-show-job-d-24.11.txt").read_text()
    assert slurm.job_field(recorded, "Comment") == "hello there x=1"
    assert slurm.job_field(recorded, "JobState") == "RUNNING"
    assert slurm.job_field(recorded, "BatchHost") == "node1"
    assert slurm.job_field(BRACKETED_DETAIL, "Comment") == "slurm-vc: node gw007: unknown image 'x' (a = b)"
    uneven = (FIXTURES / "scontrol-show-job-d-22.05-uneven.txt").read_text()
    assert slurm.job_field(uneven, "Comment") is None


def _smt_host() -> HostTopology:
    """One socket, two cores, two threads each, OS numbering 0,1 = first threads, 2,3 = siblings."""
    cpus = {
        0: Cpu(0, 0, 0, 0, (0, 2)),
        1: Cpu(1, 0, 1, 0, (1, 3)),
        2: Cpu(2, 0, 0, 0, (0, 2)),
        3: Cpu(3, 0, 1, 0, (1, 3)),
    }
    return HostTopology(cpus=cpus, nodes={0: NumaNode(0, (0, 1, 2, 3), 1 << 30, 1 << 30)})


def test_abstract_cpu_ids_follow_cores_then_threads():
    host = _smt_host()
    # Slurm's abstract ids: 0 = core0/thread0, 1 = core0/thread1, 2 = core1/thread0, 3 = core1/thread1.
    assert slurm.abstract_to_os_cpus([0, 1], host) == (0, 2)
    assert slurm.abstract_to_os_cpus([2, 3], host) == (1, 3)
    assert slurm.abstract_to_os_cpus([0, 2], host) == (0, 1)
    with pytest.raises(SlurmError, match="do not exist on this host"):
        slurm.abstract_to_os_cpus([4], host)


def test_cpu_id_lists():
    assert slurm.parse_cpu_ids("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    with pytest.raises(SlurmError):
        slurm.parse_cpu_ids("0-x")


def test_squeue_ids():
    assert slurm.parse_squeue_ids("3\n17\n") == {3, 17}
    assert slurm.parse_squeue_ids("") == set()
    with pytest.raises(SlurmError, match="unexpected squeue output"):
        slurm.parse_squeue_ids("JOBID\n3\n")


# --------------------------------------------------------------------------- the CLI path


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """A directory of stand-in scontrol/squeue/srun that log their argv and print canned output."""
    log = tmp_path / "calls"

    def make(name: str, body: str) -> None:
        path = tmp_path / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    monkeypatch.setenv(slurm.BINDIR_ENV, str(tmp_path))
    monkeypatch.setenv(slurm.NO_PYSLURM_ENV, "1")
    return make, log


def test_allocated_cpus_and_memory_via_scontrol(fake_slurm):
    make, log = fake_slurm
    make("scontrol", f"cat {FIXTURES / 'scontrol-show-job-d-22.05-uneven.txt'}")
    assert slurm.allocated_cpus_and_memory(3, "h7n1").cpu_ids == (0, 1)
    assert log.read_text().split("\n")[0] == "scontrol show job -d 3"


def test_live_job_ids_and_failures(fake_slurm):
    make, log = fake_slurm
    make("squeue", "printf '5\\n9\\n'")
    assert slurm.live_job_ids("n1") == {5, 9}
    assert "squeue -h -o %A -w n1" in log.read_text()
    make("squeue", "echo 'squeue: error: Unable to contact slurm controller' >&2; exit 1")
    with pytest.raises(SlurmError, match="Unable to contact slurm controller"):
        slurm.live_job_ids()


def test_comment_drain_and_srun_argv(fake_slurm):
    make, log = fake_slurm
    make("scontrol", "exit 0")
    make("srun", 'echo \'{"node": "n2"}\'')
    slurm.set_job_comment(7, "slurm-vc[0]: node n1: bad\nthing")
    slurm.drain_node("n1", "slurm-vc job 7: libvirt down")
    slurm.requeue_hold(7)
    out = slurm.run_on_job_nodes(7, ["n2", "n3"], ["/usr/bin/python3", "-m", "slurm_vc", "status"])
    assert out.strip() == '{"node": "n2"}'
    calls = log.read_text().splitlines()
    assert calls[0] == "scontrol update JobId=7 Comment=slurm-vc[0]: node n1: bad thing"
    assert calls[1] == "scontrol update NodeName=n1 State=DRAIN Reason=slurm-vc job 7: libvirt down"
    assert calls[2] == "scontrol requeuehold 7"
    calls.pop(2)
    assert calls[2].startswith(
        "srun --overlap --jobid=7 --nodes=2 --ntasks=2 --ntasks-per-node=1 --nodelist=n2,n3"
    )
    assert "--export=ALL,SLURM_VC_HOST=1" in calls[2]


def test_command_timeout(fake_slurm, monkeypatch):
    make, _ = fake_slurm
    make("scontrol", "sleep 5")
    monkeypatch.setattr(slurm, "COMMAND_TIMEOUT", 0.2)
    with pytest.raises(SlurmError, match="did not answer"):
        slurm._run(["scontrol", "show", "job", "1"], timeout=0.2)


def test_commands_found_without_path(monkeypatch):
    monkeypatch.delenv(slurm.BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", "")
    path = slurm.slurm_command("sh")  # any command in DEFAULT_PATH stands in for scontrol
    assert os.path.isabs(path)
    with pytest.raises(SlurmError, match="cannot find"):
        slurm.slurm_command("no-such-slurm-command")


def test_restart_count_from_either_variable():
    env = dict(read_env("prolog-env-22.05.txt"))
    env["SLURM_JOB_RESTART_COUNT"] = "2"
    assert slurm.job_facts_from_env(env).restart_count == 2
    del env["SLURM_JOB_RESTART_COUNT"]
    env["SLURM_RESTART_COUNT"] = "3"  # the name tasks see
    assert slurm.job_facts_from_env(env).restart_count == 3
