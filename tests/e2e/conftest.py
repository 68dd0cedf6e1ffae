"""Shared e2e fixture: one 3-node sandbox cluster for the whole e2e session, down at the end.

Use it in any e2e test::

    @pytest.mark.e2e
    def test_something(sandbox):
        job = sandbox.sbatch("-N3", "--wrap", "hostname")   # as the job user (vcuser)
        assert sandbox.wait_job(job) == "COMPLETED"
        print(sandbox.job_output(job))
        result = sandbox.exec(["srun", "-N3", "hostname"])    # CompletedProcess, text, captured
        sandbox.exec("scontrol show nodes", user="root")      # a string runs through /bin/sh -c

The sandbox is named ``ve<digits>``, picked so that its subnet, port and job ids collide with no other
sandbox up on the machine (a demo, another test session).  Set ``SLURM_VC_E2E_NAME`` to use a fixed
name, and ``SLURM_VC_E2E_KEEP=1`` to leave it up after the session.  A session killed before its
teardown leaves its sandbox up; the next session takes it down (sandboxes are claimed with an owner
file holding the session's PID).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest
from jobdir import job_workdir

from slurm_vc.slurm import TERMINAL_JOB_STATES

E2E_PREFIX = "ve"
E2E_NODES = 3


def sandbox_unavailable() -> Optional[str]:
    """Why a sandbox cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return "the sandbox cluster needs root"
    for path in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/etc/munge/munge.key"):
        if not os.path.exists(path):
            return f"{path} missing (run scripts/install-deps.sh)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    return None


@dataclass
class SandboxHandle:
    """What e2e tests get: run commands against the sandbox, submit and wait for jobs."""

    name: str
    base: Path
    nodes: list[str]
    user: str
    slurm_conf: Path
    workdir: Path  # the job user's working directory for this session (job_workdir)
    sandbox: object = field(repr=False)  # slurm_vc.sandbox.cluster.Sandbox

    def exec(
        self,
        cmd: Union[str, Sequence[str]],
        user: Optional[str] = None,
        timeout: float = 300,
        cwd: Optional[str] = None,
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` (argv list, or a string for /bin/sh -c) as ``user`` (default: the job user).

        It runs in ``cwd``, else in the session's ``workdir`` (where sbatch puts job output)."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        cwd = cwd or str(self.workdir)
        return self.sandbox.exec_argv(argv, user=user, cwd=cwd, capture=True, timeout=timeout)

    def node_config(self, node: str) -> Path:
        """The node's site config (vcluster-<node>.toml): libvirt_uri, state_dir, bridge, images."""
        return self.sandbox.layout.node_config(node)

    @property
    def layout(self):
        """slurm_vc.sandbox.layout.SandboxLayout: every path, name and address of the sandbox."""
        return self.sandbox.layout

    def node_state_dir(self, node: str) -> Path:
        """The node's slurm-vc state_dir (per-job state, overlays, jobenv; ledgers are in its runtime_dir)."""
        return self.sandbox.layout.node_state_dir(node)

    def libvirt_uri(self, node: str) -> str:
        return self.sandbox.layout.libvirt_uri(node)

    def netns(self, node: str) -> str:
        """The node's network namespace name (use ``nsenter --net=/run/netns/NAME``)."""
        return self.sandbox.layout.netns(node)

    @property
    def login_config(self) -> Path:
        return self.sandbox.layout.login_config

    def sbatch(self, *args: str, user: Optional[str] = None) -> int:
        """Submit with ``sbatch --parsable ARGS`` from ``workdir``; returns the job id."""
        result = self.exec(["sbatch", "--parsable", *args], user=user)
        if result.returncode != 0:
            raise AssertionError(f"sbatch {shlex.join(args)} failed ({result.returncode}): {result.stderr}")
        return int(result.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict ({} once the job is gone)."""
        result = self.exec(["scontrol", "show", "job", "-o", str(job_id)], user="root")
        if result.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def wait_job(self, job_id: int, timeout: float = 300) -> str:
        """Wait until the job reaches a terminal state; returns it (e.g. COMPLETED).  Fails on timeout."""
        deadline = time.monotonic() + timeout
        state, seen = "", ""
        while time.monotonic() < deadline:
            state = self.job_info(job_id).get("JobState", "")
            seen = state or seen
            if state in TERMINAL_JOB_STATES:
                return state
            time.sleep(0.2)
        last = f"last seen {seen}" if seen else "never seen by scontrol"
        raise AssertionError(f"job {job_id} not finished after {timeout} s ({last}, now {state or 'gone'})")

    def job_output(self, job_id: int) -> str:
        """The job's StdOut file content."""
        path = self.job_info(job_id).get("StdOut", "")
        return Path(path).read_text() if path else ""

    def node_states(self) -> dict[str, str]:
        return self.sandbox.node_states()

    def resume_nodes(self) -> None:
        """Return drained/down nodes to service (after a test that drains one on purpose)."""
        for node, state in self.node_states().items():
            if state.startswith(("drain", "down")) or "drain" in state:
                self.exec(["scontrol", "update", f"nodename={node}", "state=resume"], user="root")


def _owner_file(root: str, name: str) -> Path:
    return Path(root) / f".{name}.owner"


def reap_stale_sandboxes(prefix: str) -> None:
    """Take down sandboxes named ``<prefix><digits>`` whose claiming test session is gone."""
    from slurm_vc.sandbox import procs
    from slurm_vc.sandbox.cluster import Sandbox
    from slurm_vc.sandbox.layout import DEFAULT_ROOT, NAME_RE

    root = Path(DEFAULT_ROOT)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        name = entry.name
        # Only names this scheme hands out (prefix + digits): never a sandbox someone named by hand.
        digits = name[len(prefix) :]
        if (
            not entry.is_dir()
            or not name.startswith(prefix)
            or not digits.isdigit()
            or not NAME_RE.match(name)
        ):
            continue
        owner = _owner_file(DEFAULT_ROOT, name)
        try:
            pid, start = (int(x) for x in owner.read_text().split())
            if procs.alive(procs.ProcRef(pid, start)):
                continue  # another live session's sandbox
        except (OSError, ValueError):
            pass
        Sandbox(name, quiet=True).down(keep_logs=False)
        owner.unlink(missing_ok=True)
        (root / f".{name}.lock").unlink(missing_ok=True)  # nobody else uses a stale session's name
    for lock in root.glob(f".{prefix}*.lock"):
        name = lock.name[1 : -len(".lock")]
        if name[len(prefix) :].isdigit() and not (root / name).exists():
            lock.unlink(missing_ok=True)


def claim_sandbox_name(prefix: str) -> str:
    """A free sandbox name ``<prefix><digits>`` owned by this test process until released."""
    from slurm_vc.sandbox import procs
    from slurm_vc.sandbox.cluster import free_name
    from slurm_vc.sandbox.layout import DEFAULT_ROOT

    reap_stale_sandboxes(prefix)
    name = free_name(prefix)
    me = procs.ref_of(os.getpid())
    owner = _owner_file(DEFAULT_ROOT, name)
    owner.parent.mkdir(parents=True, exist_ok=True)
    owner.write_text(f"{me.pid} {me.start}\n")
    return name


def release_sandbox_name(name: str) -> None:
    from slurm_vc.sandbox.layout import DEFAULT_ROOT

    _owner_file(DEFAULT_ROOT, name).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def sandbox_names():
    """``claim(prefix) -> name``: free sandbox names for tests that bring up their own sandbox."""
    claimed: list[str] = []

    def claim(prefix: str) -> str:
        name = claim_sandbox_name(prefix)
        claimed.append(name)
        return name

    yield claim
    for name in claimed:
        release_sandbox_name(name)


@pytest.fixture
def require_sandbox() -> None:
    """Skip the test when a sandbox cannot run on this machine (not root, Slurm/munge missing)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sandbox(request):
    """A 3-node sandbox cluster (Slurm + per-node libvirtd), up once for the e2e session.

    Its logs, and the jobs' output in ``workdir``, are kept only when a test of the session failed
    (for the post-mortem)."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    from slurm_vc.sandbox.cluster import Sandbox

    fixed = os.environ.get("SLURM_VC_E2E_NAME")
    name = fixed or claim_sandbox_name(E2E_PREFIX)
    cluster = Sandbox(name, quiet=True)
    try:
        cluster.up(nodes=E2E_NODES)
    except BaseException:
        if not fixed:
            release_sandbox_name(name)
        raise
    handle = SandboxHandle(
        name=name,
        base=cluster.layout.base,
        nodes=cluster.nodes,
        user=cluster.user,
        slurm_conf=cluster.layout.slurm_conf,
        workdir=job_workdir(cluster.layout.log, cluster.user),
        sandbox=cluster,
    )
    try:
        yield handle
    finally:
        if not os.environ.get("SLURM_VC_E2E_KEEP"):
            cluster.down(keep_logs=request.session.testsfailed > 0)
            if not fixed:
                release_sandbox_name(name)
