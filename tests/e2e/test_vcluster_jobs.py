"""--vcluster jobs through the real sbatch/srun on the 3-node sandbox (tests/e2e/conftest.py).

What the Slurm integration promises, end to end: guests up on every node before the script starts,
``VC_*`` in the job, guest-to-guest traffic by hostname, srun tasks inside the guests (labels, stdin,
exit codes), and a clean teardown on every node (no domain, overlay, hugepage ledger, tap, key or
state file) after a normal end, a non-zero exit, scancel during the prolog, scancel while running
and a time limit; bad --vcluster values rejected at submit with nothing queued and no node drained;
a request that fails in the prolog fails the job with its reason and drains nothing; a node fault
(libvirtd unreachable) drains that node alone and requeues the job held, which then runs once released.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

IMAGE = "tiny"
MEM = "600M"  # per node: guest memory (tiny's default 256M) plus the host reserve, below a node's share
JOB_TIMEOUT = 600  # TCG guests on a busy 2-core machine can take minutes


def _config(sandbox, node: str):
    from slurm_vc.config import load_config

    return load_config(str(sandbox.node_config(node)))


def leftovers(sandbox, job_id: int) -> dict[str, list[str]]:
    """Everything of job ``job_id`` still present on any node: state, key, ledger, domain, tap."""
    from slurm_vc import jobenv, network, state
    from slurm_vc.hugepages import ledger_dir_of, ledger_paths

    found: dict[str, list[str]] = {}
    for node in sandbox.nodes:
        config = _config(sandbox, node)
        items = []
        for path in (
            state.job_dir(config.state_dir, job_id),
            jobenv.jobenv_dir(config.state_dir, job_id),
            *map(Path, ledger_paths(ledger_dir_of(config), job_id)),
        ):
            if path.exists():
                items.append(str(path))
        domains = sandbox.exec(
            ["virsh", "-c", sandbox.libvirt_uri(node), "list", "--all", "--name"], user="root"
        )
        items += [f"domain {name}" for name in domains.stdout.split() if name.startswith(f"vc-{job_id}-")]
        links = sandbox.exec(
            ["nsenter", f"--net=/run/netns/{sandbox.netns(node)}", "ip", "-o", "link", "show"], user="root"
        )
        taps = {network.tap_name(job_id, index) for index in range(len(sandbox.nodes))}
        items += [f"tap {tap}" for tap in taps if re.search(rf"\b{tap}[@:]", links.stdout)]
        if items:
            found[node] = items
    return found


def assert_clean(sandbox, job_id: int, timeout: float = 120) -> None:
    """The epilog runs after the job's end: wait for it, then nothing of the job may remain."""
    deadline = time.monotonic() + timeout
    while True:
        found = leftovers(sandbox, job_id)
        if not found or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found == {}, f"job {job_id} left behind: {found}"
    assert not drained(sandbox), f"nodes drained: {drained(sandbox)}"


def drained(sandbox) -> dict[str, str]:
    return {
        node: state for node, state in sandbox.node_states().items() if "drain" in state or "down" in state
    }


def output(sandbox, job_id: int) -> str:
    """The job's output so far ('' while the file does not exist yet, or never will)."""
    try:
        return sandbox.job_output(job_id)
    except FileNotFoundError:
        return ""


def write_script(sandbox, name: str, body: str) -> str:
    path = sandbox.workdir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    sandbox.exec(["chown", sandbox.user, str(path)], user="root")
    return str(path)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(autouse=True)
def healthy_nodes(sandbox):
    """Every test starts and ends with no drained node (a failure here names the culprit test)."""
    sandbox.resume_nodes()
    yield
    leftover = drained(sandbox)
    sandbox.resume_nodes()
    assert not leftover, f"the test left nodes drained: {leftover}"


HELLO = r"""
echo "START $(date +%s.%N)"
slurm-vc status
echo "STATUS_RC=$?"
echo "VC_HOSTS=$VC_HOSTS"
echo "VC_IPS=$VC_IPS"
echo "VC_LOCAL_GUEST=$VC_LOCAL_GUEST"
echo "VC_HOSTFILE=$VC_HOSTFILE"
echo "HOSTFILE_LINES=$(wc -l < "$VC_HOSTFILE")"
echo "KEY=$(stat -c '%a %U' "$VC_SSH_KEY")"
echo "HOSTS=$(slurm-vc hosts | tr '\n' ' ')"
last=$(slurm-vc hosts | tail -n 1)
slurm-vc run -- ping -c 1 -W 5 "$last" > ping.$SLURM_JOB_ID 2>&1
echo "PING_RC=$?"
echo "SRUN_HOSTNAME=$(srun -N3 hostname | sort | tr '\n' ' ')"
printf 'line-in\n' | srun -N1 -n1 -l sh -c 'read x; echo "got $x"; exit 3'
echo "SRUN_RC=$?"
srun -N3 -l sh -c 'echo "task $SLURM_PROCID"' | sort > labels.$SLURM_JOB_ID
echo "HOST_STEP=$(srun -N3 --vcluster-host hostname | sort | tr '\n' ' ')"
echo "HOST_STEP_ENV=$(SLURM_VC_HOST=1 srun -N1 hostname)"
"""


def test_three_node_job_lifecycle(sandbox):
    script = write_script(sandbox, "vc-hello.sh", HELLO)
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "10", f"--vcluster={IMAGE}", script)
    state = sandbox.wait_job(job, timeout=JOB_TIMEOUT)
    out = sandbox.job_output(job)
    assert state == "COMPLETED", out
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", out, flags=re.MULTILINE))
    hosts = values["VC_HOSTS"].split(",")
    assert len(hosts) == 3 and len(set(hosts)) == 3
    # The guests were up before the script started: status says "ready" for all three at its first line.
    assert values["STATUS_RC"] == "0", out
    assert out.count(" ready ") == 3, out
    assert len(values["VC_IPS"].split(",")) == 3
    assert values["VC_LOCAL_GUEST"] == hosts[0]  # the batch script runs on the first node
    assert values["HOSTFILE_LINES"] == "3"
    assert values["KEY"] == f"600 {sandbox.user}"
    assert values["HOSTS"].split() == hosts
    # Guest-to-guest by hostname, from every guest to the last one.
    ping = (sandbox.workdir / f"ping.{job}").read_text()
    assert values["PING_RC"] == "0", ping
    assert all(f"{host}: " in ping for host in hosts), ping
    # srun tasks run inside the guests: their hostnames are the guests' names.
    assert values["SRUN_HOSTNAME"].split() == sorted(hosts)
    assert "0: got line-in" in out  # stdin forwarded and `srun -l` label kept
    assert values["SRUN_RC"] == "3"  # the task's exit code comes back through srun
    labels = (sandbox.workdir / f"labels.{job}").read_text().splitlines()
    assert labels == ["0: task 0", "1: task 1", "2: task 2"]
    # Opt-outs: steps on the hosts see the Slurm node names.
    assert values["HOST_STEP"].split() == sorted(sandbox.nodes)
    assert values["HOST_STEP_ENV"] in sandbox.nodes
    assert_clean(sandbox, job)


def test_null_guest_job(sandbox):
    """The time-to-cluster benchmark's guest (``null``) starts through the whole path on every node."""
    script = write_script(sandbox, "vc-null.sh", 'slurm-vc status\necho "VC_HOSTS=$VC_HOSTS"\n')
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "5", "--vcluster=null", script)
    state = sandbox.wait_job(job, timeout=JOB_TIMEOUT)
    out = sandbox.job_output(job)
    assert state == "COMPLETED", out
    assert out.count(" ready ") == 3, out
    assert len(re.search(r"^VC_HOSTS=(.*)$", out, flags=re.MULTILINE).group(1).split(",")) == 3
    assert_clean(sandbox, job)


def test_allocations_made_by_srun_and_salloc(sandbox):
    """Not only sbatch: ``srun --vcluster`` making its own allocation runs its tasks in the guests,
    and so do the srun steps of an ``salloc --vcluster`` shell, whose own ``slurm-vc hosts`` (on the
    submit host) says where the guest list is instead.  Both tear down like batch jobs."""
    args = ["-N3", f"--mem={MEM}", "-t", "5", f"--vcluster={IMAGE}"]
    done = sandbox.exec(["srun", *args, "sh", "-c", 'echo "$(hostname) $SLURM_JOB_ID"'], timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.split("\n")[:-1])
    job = int(lines[0].split()[1])
    assert [line.split()[0] for line in lines] == [f"vc{job}-{index}" for index in range(3)], done.stdout
    assert_clean(sandbox, job)

    shell = 'echo "JOB=$SLURM_JOB_ID"; slurm-vc hosts; echo "HOSTS_RC=$?"; srun -N3 hostname | sort'
    done = sandbox.exec(["salloc", *args, "sh", "-c", shell], timeout=JOB_TIMEOUT)
    assert done.returncode == 0, done.stderr
    job = int(re.search(r"^JOB=(\d+)$", done.stdout, flags=re.MULTILINE).group(1))
    assert "guest list is published on its nodes" in done.stderr and "HOSTS_RC=10" in done.stdout
    assert done.stdout.split("\n")[-4:-1] == [f"vc{job}-{index}" for index in range(3)], done.stdout
    assert_clean(sandbox, job)


def test_nonzero_exit_tears_down(sandbox):
    script = write_script(sandbox, "vc-fail.sh", "slurm-vc run -- true || exit 99\nexit 3\n")
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "10", f"--vcluster={IMAGE}", script)
    assert sandbox.wait_job(job, timeout=JOB_TIMEOUT) == "FAILED"
    assert sandbox.job_info(job)["ExitCode"] == "3:0"
    assert_clean(sandbox, job)


def test_scancel_during_prolog(sandbox):
    script = write_script(sandbox, "vc-never.sh", "echo SHOULD-NOT-RUN\n")
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "10", f"--vcluster={IMAGE}", script)
    config = _config(sandbox, sandbox.nodes[-1])
    from slurm_vc import state

    # The prolog has begun on the last node once the job's state directory exists there.
    wait_for(lambda: state.job_dir(config.state_dir, job).exists(), JOB_TIMEOUT, f"job {job}'s prolog")
    assert sandbox.exec(["scancel", str(job)]).returncode == 0
    assert sandbox.wait_job(job, timeout=JOB_TIMEOUT) == "CANCELLED"
    assert_clean(sandbox, job, timeout=300)
    assert "SHOULD-NOT-RUN" not in output(sandbox, job)


def test_scancel_while_running(sandbox):
    script = write_script(sandbox, "vc-sleep.sh", 'echo "RUNNING $VC_HOSTS"\nsleep 600\n')
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "15", f"--vcluster={IMAGE}", script)
    wait_for(lambda: "RUNNING vc" in output(sandbox, job), JOB_TIMEOUT, f"job {job} to start")
    assert sandbox.exec(["scancel", str(job)]).returncode == 0
    assert sandbox.wait_job(job, timeout=120) == "CANCELLED"
    assert_clean(sandbox, job)


def test_time_limit(sandbox):
    script = write_script(sandbox, "vc-long.sh", 'echo "RUNNING $VC_HOSTS"\nsleep 600\n')
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "1", f"--vcluster={IMAGE}", script)
    assert sandbox.wait_job(job, timeout=JOB_TIMEOUT + 120) == "TIMEOUT"
    assert "RUNNING vc" in sandbox.job_output(job)
    assert_clean(sandbox, job)


def test_prolog_user_fault_fails_the_job_without_draining(sandbox):
    # Valid at submit (grammar and catalog) but impossible on the allocation: more vCPUs than cores.
    script = write_script(sandbox, "vc-toobig.sh", "echo SHOULD-NOT-RUN\n")
    job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "5", f"--vcluster={IMAGE},vcpus=64", script)
    assert sandbox.wait_job(job, timeout=JOB_TIMEOUT) == "FAILED"
    out = sandbox.job_output(job)
    assert "vcpus=64" in out and "SHOULD-NOT-RUN" not in out
    assert sandbox.job_info(job)["Comment"].startswith("slurm-vc[0]:")
    assert_clean(sandbox, job)


def node_reason(sandbox, node: str) -> str:
    shown = sandbox.exec(["scontrol", "show", "node", "-o", node], user="root").stdout
    match = re.search(r"\bReason=(.*?)(?: \[\w+@[^\]]*\])?(?= \w+=|$)", shown.strip())
    return match.group(1) if match else ""


def test_node_fault_drains_that_node_and_requeues_the_job_held(sandbox):
    """libvirtd unreachable on one node (its site config names a socket that is not there): a node
    fault.  That node alone drains, with the prolog's reason; the job is requeued and held, not
    failed, and nothing of it is left on any node.  Once the node is repaired and resumed and the job
    released, the same job runs to the end: the first run's Comment does not fail the second."""
    broken = sandbox.nodes[-1]
    conf = Path(sandbox.node_config(broken))
    original = conf.read_text()
    socket = str(sandbox.layout.libvirt_socket(broken))
    assert socket in original
    conf.write_text(original.replace(socket, socket + ".gone"))
    try:
        script = write_script(sandbox, "vc-requeue.sh", 'echo "RAN restart=$SLURM_RESTART_COUNT $VC_HOSTS"\n')
        job = sandbox.sbatch("-N3", f"--mem={MEM}", "-t", "10", f"--vcluster={IMAGE}", script)

        def requeued_held() -> bool:
            info = sandbox.job_info(job)
            return info.get("JobState") == "PENDING" and info.get("Restarts") == "1"

        wait_for(requeued_held, JOB_TIMEOUT, f"job {job} to be requeued")
        info = sandbox.job_info(job)
        assert "held" in info.get("Reason", "").lower() or info.get("Priority") == "0", info
        assert set(drained(sandbox)) == {broken}, drained(sandbox)
        reason = node_reason(sandbox, broken)
        assert reason.startswith(f"slurm-vc job {job}: cannot connect to libvirt"), reason
        comment = sandbox.exec(["squeue", "-h", "-j", str(job), "-o", "%k"], user="root").stdout.strip()
        assert comment.startswith(f"slurm-vc[0]: node {broken}: cannot connect to libvirt"), comment
        # the epilogs of the failed run took down the guests the other nodes had started
        deadline = time.monotonic() + 120
        while leftovers(sandbox, job) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert leftovers(sandbox, job) == {}
        assert "RAN" not in output(sandbox, job)
    finally:
        conf.write_text(original)
    sandbox.resume_nodes()
    assert sandbox.exec(["scontrol", "release", str(job)], user="root").returncode == 0
    # Slurm makes a requeued job wait ~2 minutes (its BeginTime); an admin may start it at once.
    assert sandbox.exec(["scontrol", "update", f"JobId={job}", "StartTime=now"], user="root").returncode == 0
    assert sandbox.wait_job(job, timeout=JOB_TIMEOUT) == "COMPLETED", output(sandbox, job)
    assert re.search(r"^RAN restart=1 vc\S+,vc\S+,vc\S+$", output(sandbox, job), flags=re.MULTILINE), output(
        sandbox, job
    )
    assert_clean(sandbox, job)


@pytest.mark.parametrize(
    "value, message",
    [
        ("no-such-image", "unknown image 'no-such-image'"),
        ("tiny,vcpus=0", "vcpus"),
        ("tiny,vcpus=lots", "vcpus"),
        ("tiny,mem=12XB", "mem"),
        ("tiny,mem=-1G", "mem"),
        ("tiny,pages=4K", "pages"),
        ("tiny,colour=blue", "unknown --vcluster option 'colour'"),
        ("tiny,vcpus=2,vcpus=4", "given twice"),
        ("tiny;reboot", "only letters, digits"),
        ("$(id)", "only letters, digits"),
        ("x" * 300, "at most 256"),
        ("", "needs a value"),
    ],
)
def test_bad_values_rejected_at_submit(sandbox, value, message):
    before = sandbox.exec(["squeue", "-h", "-o", "%i"], user="root").stdout.split()
    done = sandbox.exec(["sbatch", f"--vcluster={value}", "--wrap", "hostname"])
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
    assert "Submitted batch job" not in done.stdout
    after = sandbox.exec(["squeue", "-h", "-o", "%i"], user="root").stdout.split()
    assert after == before  # nothing queued
    assert not drained(sandbox)
