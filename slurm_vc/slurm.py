"""Everything slurm-vc learns from, or tells, Slurm.  The only module that talks to Slurm.

Facts come from three places, cheapest first:

- the environment Slurm gives the prolog, epilog, TaskProlog and tasks (:func:`job_facts_from_env`);
- pyslurm, when it is importable and built for the running Slurm (it refuses to import otherwise);
- the Slurm CLI (``scontrol``, ``squeue``, ``srun``), found by absolute path because the prolog
  runs with no PATH.

Parsers are pure functions over text so they are tested against recorded outputs of Slurm 22.05
and 24.11 (tests/fixtures/slurm/).  Every failure is a :class:`~slurm_vc.errors.SlurmError`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from .errors import SlurmError
from .text import printable

# Job states after which a job never runs again (squeue/scontrol JobState values).
TERMINAL_JOB_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

# Where Slurm's commands live when PATH is empty (the prolog's environment has none).
DEFAULT_PATH = "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin"
BINDIR_ENV = "SLURM_VC_SLURM_BINDIR"  # override: a directory holding scontrol, squeue, srun
NO_PYSLURM_ENV = "SLURM_VC_NO_PYSLURM"  # =1: never try pyslurm
COMMAND_TIMEOUT = 30.0  # seconds for one scontrol/squeue call

# Pseudo step ids (slurm.h): batch, extern, interactive... are all >= this.
FIRST_PSEUDO_STEP = 0xFFFFFFF0


# --------------------------------------------------------------------------- hostlists


def _split_outside_brackets(text: str, sep: str = ",") -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"malformed host list {text!r}: unbalanced ']'")
        if ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise SlurmError(f"malformed host list {text!r}: unbalanced '['")
    parts.append("".join(current))
    return parts


def _expand_range_set(body: str, whole: str) -> list[str]:
    """``1-3,07,10-11`` -> ['1','2','3','07','10','11'] keeping zero padding."""
    values: list[str] = []
    for item in body.split(","):
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise SlurmError(f"malformed host list {whole!r}: bad range {item!r}")
        if not sep:
            values.append(lo)
            continue
        if int(hi) < int(lo):
            raise SlurmError(f"malformed host list {whole!r}: range {item!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
    return values


def _expand_term(term: str, whole: str) -> list[str]:
    match = re.search(r"\[([^\[\]]*)\]", term)
    if not match:
        if "[" in term or "]" in term:
            raise SlurmError(f"malformed host list {whole!r}")
        return [term]
    head, tail = term[: match.start()], term[match.end() :]
    return [
        head + value + rest
        for value in _expand_range_set(match.group(1), whole)
        for rest in _expand_term(tail, whole)
    ]


def expand_hostlist(text: str) -> list[str]:
    """Expand a Slurm host list (``n[1-3,05],gpu[01-02]-ib``) into names, in Slurm's order.

    Pure Python, so the prolog needs no extra ``scontrol show hostnames`` call.  Duplicates are kept
    as given (Slurm never produces them in a job's node list).
    """
    text = (text or "").strip()
    if not text:
        return []
    names: list[str] = []
    for term in _split_outside_brackets(text):
        term = term.strip()
        if not term:
            raise SlurmError(f"malformed host list {text!r}: empty entry")
        names.extend(_expand_term(term, text))
    return names


def parse_cpus_per_node(text: str, nodes: Sequence[str]) -> dict[str, int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``4(x2),2``) as node -> CPU count, in node-list order."""
    counts: list[int] = []
    for item in (text or "").split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise SlurmError(f"malformed CPU counts {text!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    if len(counts) != len(nodes):
        raise SlurmError(f"CPU counts {text!r} describe {len(counts)} nodes, the job has {len(nodes)}")
    return dict(zip(nodes, counts))


# --------------------------------------------------------------------------- job facts


@dataclass(frozen=True)
class JobFacts:
    """What Slurm tells the prolog/epilog/TaskProlog about the job, on this node."""

    job_id: int
    user: str
    uid: int
    gid: int
    node: str  # this node (SLURMD_NODENAME)
    nodes: tuple[str, ...]  # the job's nodes, in Slurm's order
    vcluster: Optional[str]  # the --vcluster value, None if the job has none
    cpus_per_node: Mapping[str, int]  # SLURM_JOB_CPUS_PER_NODE, empty if Slurm did not say
    restart_count: int = 0

    @property
    def node_index(self) -> int:
        """Position of this node in the job's node list."""
        return self.nodes.index(self.node)


def _required(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    raise SlurmError(f"{' or '.join(names)} is not set: not run by Slurm (prolog/epilog/task) for a job?")


def _int_env(environ: Mapping[str, str], name: str, *aliases: str) -> int:
    value = _required(environ, name, *aliases)
    if not value.isdigit():
        raise SlurmError(f"{name}={value!r} is not a number")
    return int(value)


def job_id_and_node_from_env(environ: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
    """Only the job id and this node's name: all the epilog needs, so that nothing else it does not
    use (uid, node list, CPU counts) can keep it from tearing the guest down."""
    env = os.environ if environ is None else environ
    return _int_env(env, "SLURM_JOB_ID", "SLURM_JOBID"), _required(env, "SLURMD_NODENAME")


def job_facts_from_env(environ: Optional[Mapping[str, str]] = None) -> JobFacts:
    """Read the job's facts from a prolog/epilog/TaskProlog/task environment.

    The prolog gets ``SLURM_NODELIST`` (not ``SLURM_JOB_NODELIST``) and ``SPANK_VCLUSTER``; tasks get
    ``SLURM_JOB_NODELIST`` and ``SLURM_SPANK_VCLUSTER``; both spellings are accepted.
    """
    env = os.environ if environ is None else environ
    job_id = _int_env(env, "SLURM_JOB_ID", "SLURM_JOBID")
    nodes = tuple(expand_hostlist(_required(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")))
    node = _required(env, "SLURMD_NODENAME")
    if node not in nodes:
        raise SlurmError(f"this node {node!r} is not in job {job_id}'s node list {','.join(nodes)}")
    user = env.get("SLURM_JOB_USER") or env.get("USER") or ""
    uid = _int_env(env, "SLURM_JOB_UID")
    gid = _int_env(env, "SLURM_JOB_GID")
    cpus_text = env.get("SLURM_JOB_CPUS_PER_NODE", "")
    cpus = parse_cpus_per_node(cpus_text, nodes) if cpus_text else {}
    vcluster = env.get("SPANK_VCLUSTER") or env.get("SLURM_SPANK_VCLUSTER") or None
    # Slurm's prolog environment has SLURM_JOB_RESTART_COUNT, a task's SLURM_RESTART_COUNT.
    restart = env.get("SLURM_JOB_RESTART_COUNT") or env.get("SLURM_RESTART_COUNT") or "0"
    return JobFacts(
        job_id=job_id,
        user=user,
        uid=uid,
        gid=gid,
        node=node,
        nodes=nodes,
        vcluster=vcluster,
        cpus_per_node=cpus,
        restart_count=int(restart) if restart.isdigit() else 0,
    )


def step_is_pseudo(step_id: str) -> bool:
    """True for the batch/extern/interactive steps (by name or by their numeric ids)."""
    if step_id in ("batch", "extern", "interactive", "pending"):
        return True
    return step_id.isdigit() and int(step_id) >= FIRST_PSEUDO_STEP


# --------------------------------------------------------------------------- scontrol show job -d


@dataclass(frozen=True)
class Allocation:
    """This node's share of the job: Slurm CPU ids and memory."""

    cpu_ids: tuple[int, ...]  # Slurm's abstract CPU ids on the node (see abstract_to_os_cpus)
    memory: Optional[int]  # bytes; None when Slurm does not track memory (no Mem= per node)


def _fields(text: str) -> dict[str, str]:
    """``Key=Value`` pairs of ``scontrol show`` output (values end at the next `` Key=``)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        for match in re.finditer(r"(?:^|\s)([A-Za-z_:/]+)=(.*?)(?=\s+[A-Za-z_:/]+=|$)", line.strip()):
            out.setdefault(match.group(1), match.group(2))
    return out


def job_field(text: str, key: str) -> Optional[str]:
    """One field of ``scontrol show job`` output (``Comment``, ``JobState``...), None if absent."""
    if key == "Comment":
        # The comment is free text: it may contain spaces and '=' and runs to the end of its line.
        match = re.search(r"^\s*Comment=(.*)$", text, flags=re.MULTILINE)
        return match.group(1).rstrip() if match else None
    return _fields(text).get(key)


def parse_cpu_ids(text: str) -> tuple[int, ...]:
    """``0-3,8,10-11`` -> (0, 1, 2, 3, 8, 10, 11)."""
    ids: list[int] = []
    for item in text.split(","):
        lo, sep, hi = item.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise SlurmError(f"malformed CPU_IDs {text!r}")
        ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(sorted(set(ids)))


def allocation_from_job_detail(text: str, node: str) -> Allocation:
    """This node's CPU ids and memory from ``scontrol show job -d JOBID`` output (22.05 and 24.11).

    The detail lines look like ``Nodes=n[1-2] CPU_IDs=0-1 Mem=1024 GRES=`` (Mem in MiB).
    """
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("Nodes=") or "CPU_IDs=" not in line:
            continue
        fields = _fields(line)
        if node not in expand_hostlist(fields["Nodes"]):
            continue
        memory = None
        mem = fields.get("Mem")
        if mem is not None:
            if not mem.isdigit():
                raise SlurmError(f"malformed Mem={mem!r} for node {node} in scontrol show job -d")
            memory = int(mem) * 1024 * 1024 if int(mem) > 0 else None
        return Allocation(cpu_ids=parse_cpu_ids(fields["CPU_IDs"]), memory=memory)
    raise SlurmError(f"scontrol show job -d has no CPU_IDs line for node {node}")


def abstract_to_os_cpus(cpu_ids: Sequence[int], topology) -> tuple[int, ...]:
    """Map Slurm's abstract CPU ids to the OS CPU ids of ``topology`` (a HostTopology).

    Slurm numbers CPUs socket by socket, core by core, thread by thread; the OS often numbers all
    first threads before the SMT siblings.  On hosts without SMT the two agree.
    """
    order = sorted(
        topology.cpus.values(),
        key=lambda cpu: (cpu.socket, cpu.core, sorted(cpu.siblings).index(cpu.id)),
    )
    try:
        return tuple(sorted(order[i].id for i in cpu_ids))
    except IndexError:
        raise SlurmError(
            f"Slurm CPU ids {list(cpu_ids)} do not exist on this host ({len(order)} CPUs): "
            "slurm.conf describes more CPUs than the node has"
        ) from None


# --------------------------------------------------------------------------- running Slurm commands


def slurm_command(name: str) -> str:
    """Absolute path of a Slurm command (PATH may be empty in the prolog)."""
    bindir = os.environ.get(BINDIR_ENV)
    if bindir:
        candidate = os.path.join(bindir, name)
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name, path=os.environ.get("PATH") or DEFAULT_PATH) or shutil.which(
        name, path=DEFAULT_PATH
    )
    if not found:
        raise SlurmError(f"cannot find the Slurm command {name!r} (searched PATH and {DEFAULT_PATH})")
    return found


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    command = [slurm_command(argv[0]), *argv[1:]]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{' '.join(argv)}' did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise SlurmError(f"cannot run {command[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise SlurmError(f"'{' '.join(argv)}' failed: {detail}")
    return done.stdout


def _pyslurm_allocation(job_id: int, node: str) -> Optional[Allocation]:
    """The allocation through pyslurm (>= 23.2 API), or None when pyslurm is unusable here."""
    if os.environ.get(NO_PYSLURM_ENV) == "1":
        return None
    try:
        # pyslurm refuses to import unless it was built for the running Slurm release.
        import pyslurm  # type: ignore[import-not-found]

        layout = pyslurm.Job.load(job_id).get_resource_layout_per_node()
        entry = layout[node]
        memory = entry.get("memory")
        cpu_ids = entry["cpu_ids"]
        ids = parse_cpu_ids(cpu_ids) if isinstance(cpu_ids, str) else tuple(sorted(cpu_ids))
        return Allocation(cpu_ids=ids, memory=int(memory) * 1024 * 1024 if memory else None)
    except Exception:  # any mismatch or API difference: the CLI is the reference path
        return None


def show_job(job_id: int, detail: bool = False) -> str:
    """``scontrol show job [-d] JOBID`` output."""
    return _run(["scontrol", "show", "job", *(["-d"] if detail else []), str(job_id)])


def allocated_cpus_and_memory(job_id: int, node: str) -> Allocation:
    """This node's allocated CPU ids (Slurm abstract ids) and memory for the job."""
    allocation = _pyslurm_allocation(job_id, node)
    if allocation is not None:
        return allocation
    return allocation_from_job_detail(show_job(job_id, detail=True), node)


def parse_squeue_ids(text: str) -> set[int]:
    """Job ids from ``squeue -h -o %A`` output (array tasks are listed by their own job id)."""
    ids = set()
    for line in text.split():
        if not line.isdigit():
            raise SlurmError(f"unexpected squeue output line {line!r}")
        ids.add(int(line))
    return ids


def live_job_ids(node: Optional[str] = None) -> set[int]:
    """Ids of every job Slurm still knows as not finished (pending, running, completing...).

    Raises SlurmError when Slurm cannot be asked: callers (gc) must then reap nothing.
    """
    argv = ["squeue", "-h", "-o", "%A"]
    if node:
        argv += ["-w", node]
    return parse_squeue_ids(_run(argv))


def job_comment(job_id: int) -> str:
    """The job's Comment ('' when none); readable by the job's user."""
    value = job_field(show_job(job_id), "Comment")
    return "" if value in (None, "(null)") else value


def set_job_comment(job_id: int, comment: str) -> None:
    """Set the job's Comment (shown by ``scontrol show job``).  Needs root or the job's user."""
    comment = printable(comment)
    if "\n" in comment:
        comment = " ".join(comment.split())
    _run(["scontrol", "update", f"JobId={job_id}", f"Comment={comment}"])


def drain_node(node: str, reason: str) -> None:
    """Drain ``node`` with ``reason`` (what ``sinfo -R`` shows the admin).  Needs root."""
    reason = " ".join(printable(reason).split())[:250]
    _run(["scontrol", "update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}"])


def requeue_hold(job_id: int) -> None:
    """Requeue the job and hold it (it stays pending until released)."""
    _run(["scontrol", "requeuehold", str(job_id)])


def run_on_job_nodes(job_id: int, nodes: Sequence[str], argv: Sequence[str], timeout: float = 60.0) -> str:
    """Run ``argv`` once on each of ``nodes`` of the running job, on the hosts (not in the guests).

    An overlapping job step (``srun --overlap``), so it works while the job's own steps run.  Returns
    the combined stdout; callers make each line self-describing.
    """
    env_opt = "--export=ALL,SLURM_VC_HOST=1"
    command = [
        "srun",
        "--overlap",
        f"--jobid={job_id}",
        f"--nodes={len(nodes)}",
        f"--ntasks={len(nodes)}",
        "--ntasks-per-node=1",
        f"--nodelist={','.join(nodes)}",
        "--quiet",
        env_opt,
        *argv,
    ]
    return _run(command, timeout=timeout)


__all__ = [
    "Allocation",
    "JobFacts",
    "abstract_to_os_cpus",
    "allocated_cpus_and_memory",
    "allocation_from_job_detail",
    "drain_node",
    "expand_hostlist",
    "job_comment",
    "job_facts_from_env",
    "job_field",
    "live_job_ids",
    "parse_cpu_ids",
    "parse_cpus_per_node",
    "parse_squeue_ids",
    "requeue_hold",
    "run_on_job_nodes",
    "set_job_comment",
    "show_job",
    "slurm_command",
    "step_is_pseudo",
]
