"""Per-phase timings of a ``--vcluster`` job: from raw timestamps to a readable table.  Pure, no I/O.

The milestones of one job, in order (epoch seconds; the per-node ones have one value per node)::

    submit         sbatch was called (the caller's clock)
    queued         slurmctld accepted the job (its log line "_slurm_rpc_submit_batch_job JobId=...");
                   for --vcluster this includes the SPANK plugin's submit-time validation in sbatch
    allocated      slurmctld allocated the nodes (its log line "sched: Allocate JobId=...")
    prolog start   per node: the slurm-vc prolog began work (published "starting")
    guest started  per node: libvirt started the domain (the prolog's "domain" step done)
    guest ready    per node: the guest's ready line was seen
    script start   the job script's ``SCRIPT_START <epoch>`` line
    script end     the job script's ``SCRIPT_END <epoch>`` line
    teardown done  per node: the epilog removed the job's state (nothing of the job left)

:func:`phase_rows` turns a :class:`JobTimes` into rows "previous milestone -> this one": the offset
from submit and the phase's duration, as a min..max range across nodes when a milestone is per node.
A phase from a per-node milestone to a job-wide one is gated by the *last* node (the job script
waits for every guest); a phase between two per-node milestones is measured node by node.
:func:`format_table` prints them; :func:`prolog_step_rows` breaks the prolog down into the
lifecycle's steps (``slurm_vc.lifecycle.STEPS``, recorded in the job state's ``timings``).

Both the demo (scripts/demo.sh) and the time-to-cluster benchmark (bench/bench_time_to_cluster.py)
use these functions; :mod:`slurm_vc.jobwatch` collects the timestamps.
"""

from __future__ import annotations

import re
import statistics
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional

# (key, label, per_node) in time order.  Keys are attribute names of JobTimes / NodeTimes.
MILESTONES: tuple[tuple[str, str, bool], ...] = (
    ("submit", "submit", False),
    ("queued", "queued", False),
    ("allocated", "nodes allocated", False),
    ("prolog_start", "prolog start", True),
    ("guest_started", "guest started", True),
    ("guest_ready", "guests ready", True),
    ("script_start", "script start", False),
    ("script_end", "script end", False),
    ("teardown_done", "teardown done", True),
)

# The lifecycle's prolog steps, in order (slurm_vc.lifecycle records their durations in "timings").
PROLOG_STEPS: tuple[str, ...] = ("plan", "isolation", "hugepages", "overlay", "seed", "domain", "ready")

_MARK_RE = re.compile(r"^(SCRIPT_START|SCRIPT_END)\s+([0-9]+(?:\.[0-9]+)?)\s*$")
_LOG_TIME_RE = re.compile(r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)\]\s*(.*)$")


@dataclass(frozen=True)
class NodeTimes:
    """One node's milestones (epoch seconds; None = not observed) and its prolog step durations."""

    node: str
    prolog_start: Optional[float] = None
    guest_started: Optional[float] = None
    guest_ready: Optional[float] = None
    teardown_done: Optional[float] = None
    steps: Mapping[str, float] = field(default_factory=dict)  # lifecycle step -> seconds


@dataclass(frozen=True)
class JobTimes:
    """The job-wide milestones (epoch seconds; None = not observed) and every node's."""

    job_id: str
    submit: float
    queued: Optional[float] = None
    allocated: Optional[float] = None
    script_start: Optional[float] = None
    script_end: Optional[float] = None
    nodes: tuple[NodeTimes, ...] = ()


@dataclass(frozen=True)
class Range:
    """A value, or a min..max range across nodes."""

    lo: float
    hi: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Optional[Range]:
        values = list(values)
        return cls(min(values), max(values)) if values else None

    def format(self, signed: bool = False, digits: int = 2) -> str:
        sign = "+" if signed else ""
        lo = f"{self.lo:{sign}.{digits}f}"
        if abs(self.hi - self.lo) < 0.5 * 10**-digits:
            return f"{lo} s"
        return f"{lo} .. {self.hi:{sign}.{digits}f} s"


@dataclass(frozen=True)
class PhaseRow:
    """One line of the phase table: the phase ending at ``label``."""

    key: str
    label: str
    since: str  # label of the previous observed milestone ("" for submit)
    at: Range  # offset from submit
    duration: Optional[Range]  # None for the first row
    nodes: int  # how many nodes contributed (0 for a job-wide milestone)


# ------------------------------------------------------------------------------------ parsing


def parse_script_marks(text: str) -> dict[str, float]:
    """``{"script_start": t, "script_end": t}`` from a job output's ``SCRIPT_START/SCRIPT_END <epoch>`` lines.

    The first SCRIPT_START and the last SCRIPT_END win (an srun inside may echo more).
    """
    marks: dict[str, float] = {}
    for line in text.splitlines():
        match = _MARK_RE.match(line.strip())
        if not match:
            continue
        value = float(match.group(2))
        if match.group(1) == "SCRIPT_START":
            marks.setdefault("script_start", value)
        else:
            marks["script_end"] = value
    return marks


def parse_log_time(stamp: str) -> float:
    """Epoch seconds of a Slurm log timestamp ``2026-11-24T23:06:05.317`` (local time, as Slurm writes it)."""
    return datetime.fromisoformat(stamp).timestamp()


def ctld_events(log_text: str, job_id: str | int) -> dict[str, float]:
    """Job milestones from slurmctld's log (info level): ``submit``, ``allocated``, ``job_end``.

    A requeued job is allocated again: the *last* allocation before the job's end counts.
    """
    job = f"JobId={job_id}"
    events: dict[str, float] = {}
    for line in log_text.splitlines():
        match = _LOG_TIME_RE.match(line)
        if not match or job not in match.group(2):
            continue
        message = match.group(2)
        if not re.search(rf"{job}(\D|$)", message):
            continue  # JobId=15 must not match JobId=150
        when = parse_log_time(match.group(1))
        if "_slurm_rpc_submit_batch_job" in message:
            events.setdefault("submit", when)
        elif message.startswith("sched: Allocate") or ("sched/backfill" in message and "Started" in message):
            events["allocated"] = when
        elif "_job_complete" in message and "WEXITSTATUS" in message:
            events["job_end"] = when
    return events


def node_times(
    node: str,
    meta: Optional[Mapping[str, object]] = None,
    local: Optional[Mapping[str, object]] = None,
    teardown_done: Optional[float] = None,
) -> NodeTimes:
    """A node's milestones from what its prolog recorded.

    ``meta`` is the lifecycle's job state meta (``started_at``, ``ready_at``, ``timings``:
    step -> seconds, see slurm_vc.lifecycle); ``local`` is the published job view's local guest
    state (``started_at``: the prolog began, ``ready_at``).  The earliest ``started_at`` is the
    prolog start; ``ready_at`` comes from ``meta`` when it has one.  The guest started when the
    steps up to and including ``domain`` were done.
    """
    meta = meta or {}
    local = local or {}
    starts = [float(v) for v in (local.get("started_at"), meta.get("started_at")) if _is_number(v)]
    prolog_start = min(starts) if starts else None
    # The lifecycle's ready_at is the wall clock when the ready line was seen; the published view's
    # is derived (started_at + seconds to ready), so it is only the fallback.
    ready_value = meta.get("ready_at") if _is_number(meta.get("ready_at")) else local.get("ready_at")
    guest_ready = float(ready_value) if _is_number(ready_value) else None  # type: ignore[arg-type]
    raw_steps = meta.get("timings")
    steps = (
        {str(k): float(v) for k, v in raw_steps.items() if _is_number(v)}
        if isinstance(raw_steps, Mapping)
        else {}
    )
    guest_started = None
    if guest_ready is not None and "ready" in steps:
        guest_started = guest_ready - steps["ready"]
    elif _is_number(meta.get("started_at")) and "domain" in steps:
        # timings["plan"] began before started_at was written; the steps after it did not.
        after_plan = sum(steps.get(step, 0.0) for step in PROLOG_STEPS[1 : PROLOG_STEPS.index("domain") + 1])
        guest_started = float(meta["started_at"]) + after_plan  # type: ignore[arg-type]
    return NodeTimes(
        node=node,
        prolog_start=prolog_start,
        guest_started=guest_started,
        guest_ready=guest_ready,
        teardown_done=teardown_done,
        steps=steps,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------ phases


def milestone_values(job: JobTimes, key: str, per_node: bool) -> list[float]:
    """The observed values of one milestone: one per node that has it, or the job-wide one."""
    if per_node:
        return [getattr(node, key) for node in job.nodes if getattr(node, key) is not None]
    value = getattr(job, key)
    return [] if value is None else [value]


def _duration(
    job: JobTimes, previous: tuple[str, bool], current: tuple[str, bool], values: list[float]
) -> Optional[Range]:
    prev_key, prev_per_node = previous
    key, per_node = current
    if prev_per_node and per_node:
        # Node by node: this node's step, whatever the other nodes did.
        pairs = [
            getattr(node, key) - getattr(node, prev_key)
            for node in job.nodes
            if getattr(node, key) is not None and getattr(node, prev_key) is not None
        ]
        return Range.of(pairs)
    previous_values = milestone_values(job, prev_key, prev_per_node)
    if not previous_values:
        return None
    # A job-wide milestone waits for the last node; a per-node one starts after the job-wide one.
    start = max(previous_values)
    return Range.of(value - start for value in values)


def phase_rows(job: JobTimes) -> list[PhaseRow]:
    """Rows of the phase table, one per observed milestone, in time order."""
    rows: list[PhaseRow] = []
    previous: Optional[tuple[str, bool]] = None
    previous_label = ""
    for key, label, per_node in MILESTONES:
        values = milestone_values(job, key, per_node)
        if not values:
            continue
        at = Range.of(value - job.submit for value in values)
        assert at is not None
        duration = _duration(job, previous, (key, per_node), values) if previous else None
        rows.append(
            PhaseRow(
                key=key,
                label=label,
                since=previous_label,
                at=at,
                duration=duration,
                nodes=len(values) if per_node else 0,
            )
        )
        previous = (key, per_node)
        previous_label = label
    return rows


def prolog_step_rows(job: JobTimes) -> list[tuple[str, Range]]:
    """(step, min..max seconds across nodes) for each lifecycle step any node recorded, in step order."""
    names = list(PROLOG_STEPS)
    for node in job.nodes:
        names += [step for step in node.steps if step not in names]
    rows = []
    for step in names:
        found = Range.of(node.steps[step] for node in job.nodes if step in node.steps)
        if found is not None:
            rows.append((step, found))
    return rows


def time_to_cluster(job: JobTimes) -> Optional[float]:
    """Seconds from submit to the job script's start (the user's wait for the virtual cluster)."""
    return None if job.script_start is None else job.script_start - job.submit


def guest_boot(job: JobTimes) -> Optional[Range]:
    """The guests' own boot (domain started -> ready line), min..max across nodes."""
    return Range.of(node.steps["ready"] for node in job.nodes if "ready" in node.steps)


def gating_node(job: JobTimes) -> Optional[NodeTimes]:
    """The node whose guest was ready last (the one the job script waited for), if any was ready."""
    ready = [node for node in job.nodes if node.guest_ready is not None]
    return max(ready, key=lambda node: node.guest_ready) if ready else None  # type: ignore[arg-type,return-value]


def breakdown(job: JobTimes) -> Optional[dict[str, float]]:
    """Time to cluster split along the last-ready node: its guest boot (``ready`` step), its libvirt
    domain start (``domain`` step), and the rest (Slurm and slurm-vc).  None when not all are known."""
    total = time_to_cluster(job)
    node = gating_node(job)
    if total is None or node is None or "ready" not in node.steps or "domain" not in node.steps:
        return None
    boot, domain = node.steps["ready"], node.steps["domain"]
    return {"total": total, "boot": boot, "domain": domain, "rest": total - boot - domain}


def control_plane_overhead(job: JobTimes) -> Optional[float]:
    """Time to cluster minus the slowest guest's own boot: what slurm-vc and Slurm add on top."""
    total = time_to_cluster(job)
    boot = guest_boot(job)
    if total is None or boot is None:
        return None
    return total - boot.hi


# ------------------------------------------------------------------------------------ output


def format_table(job: JobTimes) -> str:
    """The phase table, the prolog's steps and the totals, as text for a person."""
    rows = phase_rows(job)
    count = len(job.nodes)
    plural = "s" if count != 1 else ""
    lines = [
        f"job {job.job_id}: per-phase timings on {count} node{plural} (a .. b = min .. max across nodes)"
    ]
    lines.append(f"  {'phase':<40}{'duration':<20}ends at (since submit)")
    for row in rows:
        name = f"{row.since} -> {row.label}" if row.since else row.label
        duration = row.duration.format() if row.duration else ""
        at = row.at.format(signed=True) if row.since else "0.00 s"
        lines.append(f"  {name:<40}{duration:<20}{at}")
    steps = prolog_step_rows(job)
    if steps:
        lines.append("  inside the prolog (slurm-vc lifecycle steps):")
        text = ", ".join(f"{step} {found.format()}" for step, found in steps)
        lines += textwrap.wrap(text, width=100, initial_indent="    ", subsequent_indent="    ")
    total = time_to_cluster(job)
    parts = breakdown(job)
    if total is not None:
        text = f"  time to cluster (submit -> script start): {total:.2f} s"
        lines.append(text)
        if parts is not None:
            lines.append(
                f"    = guest boot {parts['boot']:.2f} s + libvirt domain start {parts['domain']:.2f} s"
                f" + Slurm and slurm-vc {parts['rest']:.2f} s (on the node ready last)"
            )
    missing = [label for key, label, per_node in MILESTONES if not milestone_values(job, key, per_node)]
    if missing:
        lines.append(f"  not observed: {', '.join(missing)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ statistics


def median(values: Sequence[float]) -> Optional[float]:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


__all__ = [
    "MILESTONES",
    "PROLOG_STEPS",
    "JobTimes",
    "NodeTimes",
    "PhaseRow",
    "Range",
    "control_plane_overhead",
    "ctld_events",
    "breakdown",
    "format_table",
    "gating_node",
    "guest_boot",
    "median",
    "milestone_values",
    "node_times",
    "parse_log_time",
    "parse_script_marks",
    "phase_rows",
    "prolog_step_rows",
    "time_to_cluster",
]
