"""Collect a job's timeline on a sandbox cluster, and check that a job left nothing behind.

The I/O half of :mod:`slurm_vc.timeline`, used by scripts/demo.sh and bench/bench_time_to_cluster.py.
The prolog's records live in each node's state dir only while the job exists (the epilog deletes
them), so :class:`JobWatcher` polls them while the job runs and notes when they disappear::

    <state_dir>/jobs/<id>/state.json     meta: started_at, ready_at, timings   (slurm_vc.lifecycle)
    <state_dir>/jobenv/<id>/guests.json  local: started_at, ready_at            (slurm_vc.jobenv)

"teardown done" on a node is the first poll that finds both gone after either was seen (so its
resolution is the poll interval).  Submit, allocation and job end come from the caller's clock and
slurmctld's log; script start/end from the job output's ``SCRIPT_START/SCRIPT_END <epoch>`` lines.

Command line (root; ``--name`` is the sandbox name)::

    python -m slurm_vc.jobwatch watch  --name N --job ID --submit EPOCH --out F.json [--timeout S]
    python -m slurm_vc.jobwatch report --name N --timeline F.json --output slurm-ID.out
    python -m slurm_vc.jobwatch pools  > pools.json          # hugepage pool sizes now
    python -m slurm_vc.jobwatch leaks  --name N --job ID [--pools-before pools.json] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import timeline
from .slurm import TERMINAL_JOB_STATES

POLL = 0.02  # seconds between polls: stat + read of two small files per node
HUGEPAGES_SYSFS = Path("/sys/kernel/mm/hugepages")


@dataclass
class NodeRecord:
    """What the watcher saw of one node's records for the job."""

    node: str
    meta: dict = field(default_factory=dict)  # latest lifecycle meta
    local: dict = field(default_factory=dict)  # latest published local guest state
    first_seen: Optional[float] = None
    teardown_done: Optional[float] = None
    domain_xml: Optional[str] = None  # the guest's libvirt XML (the benchmark's plain-QEMU baseline)

    def to_json(self) -> dict:
        return {
            "node": self.node,
            "meta": self.meta,
            "local": self.local,
            "first_seen": self.first_seen,
            "teardown_done": self.teardown_done,
            "domain_xml": self.domain_xml,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> NodeRecord:
        return cls(
            node=str(data["node"]),
            meta=dict(data.get("meta") or {}),
            local=dict(data.get("local") or {}),
            first_seen=data.get("first_seen"),
            teardown_done=data.get("teardown_done"),
            domain_xml=data.get("domain_xml"),
        )

    def times(self) -> timeline.NodeTimes:
        return timeline.node_times(self.node, self.meta, self.local, self.teardown_done)


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or caught mid-replace: the next poll reads it
    return data if isinstance(data, dict) else None


class JobWatcher:
    """Polls every node's state dir for one job's records (see the module docstring)."""

    def __init__(
        self, state_dirs: Mapping[str, Path], job_id: str | int, clock: Callable[[], float] = time.time
    ):
        self.job_id = str(job_id)
        self.state_dirs = {node: Path(path) for node, path in state_dirs.items()}
        self.records = {node: NodeRecord(node) for node in self.state_dirs}
        self.clock = clock

    def poll_once(self) -> None:
        """Read every node's records once; note first sight and disappearance."""
        for node, state_dir in self.state_dirs.items():
            record = self.records[node]
            job_dir = state_dir / "jobs" / self.job_id
            env_dir = state_dir / "jobenv" / self.job_id
            now = self.clock()
            present = job_dir.exists() or env_dir.exists()
            if present:
                if record.first_seen is None:
                    record.first_seen = now
                state = _read_json(job_dir / "state.json")
                if state and isinstance(state.get("meta"), dict):
                    record.meta = state["meta"]
                view = _read_json(env_dir / "guests.json")
                if view and isinstance(view.get("local"), dict):
                    record.local = view["local"]
                if record.domain_xml is None and (job_dir / "domain.xml").exists():
                    record.domain_xml = read_text(job_dir / "domain.xml") or None
                record.teardown_done = None  # back again (a requeued job's new prolog)
            elif record.first_seen is not None and record.teardown_done is None:
                record.teardown_done = now

    def torn_down(self) -> bool:
        """True when every node that had records for the job has lost them again."""
        seen = [r for r in self.records.values() if r.first_seen is not None]
        return all(r.teardown_done is not None for r in seen)

    def run(self, job_finished: Callable[[], bool], timeout: float, grace: float = 3.0) -> bool:
        """Poll until the job finished and every node tore down (True), or ``timeout`` (False).

        A node that never showed records (a job without --vcluster, or polling started late) does not
        hold the wait up once the job finished and ``grace`` seconds passed for a late epilog.
        """
        deadline = time.monotonic() + timeout
        finished_at: Optional[float] = None
        next_check = 0.0
        while time.monotonic() < deadline:
            self.poll_once()
            now = time.monotonic()
            if finished_at is None and now >= next_check:
                next_check = now + 0.25  # a Slurm query costs ~10 ms: not every poll
                if job_finished():
                    finished_at = now
            if finished_at is not None and self.torn_down():
                if any(r.first_seen for r in self.records.values()) or now - finished_at >= grace:
                    return True
            time.sleep(POLL)
        return False

    def node_times(self) -> tuple[timeline.NodeTimes, ...]:
        """Milestones of the nodes that had records for the job."""
        return tuple(r.times() for r in self.records.values() if r.first_seen is not None)

    def to_json(self) -> dict:
        return {"job_id": self.job_id, "nodes": [r.to_json() for r in self.records.values()]}


# ------------------------------------------------------------------------------------ sandbox glue


def _sandbox(name: str):
    from .sandbox.cluster import Sandbox

    return Sandbox(name, quiet=True)


def job_state(sandbox, job_id: str | int) -> tuple[str, str]:
    """(JobState, ExitCode) from ``scontrol show job``; ("GONE", "") once Slurm forgot the job."""
    result = sandbox.exec_argv(
        ["scontrol", "-o", "show", "job", str(job_id)], user="root", capture=True, timeout=30
    )
    if result.returncode != 0:
        return "GONE", ""
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "")


def job_finished(sandbox, job_id: str | int) -> bool:
    state, _ = job_state(sandbox, job_id)
    return state in TERMINAL_JOB_STATES or state == "GONE"


def state_dirs(sandbox) -> dict[str, Path]:
    return {node: sandbox.layout.node_state_dir(node) for node in sandbox.nodes}


def job_times(
    job_id: str | int,
    submit: float,
    records: Mapping[str, NodeRecord] | tuple[timeline.NodeTimes, ...],
    output_text: str = "",
    ctld_log_text: str = "",
) -> timeline.JobTimes:
    """Assemble a JobTimes from the caller's submit clock, the watcher's records, output and log."""
    marks = timeline.parse_script_marks(output_text)
    events = timeline.ctld_events(ctld_log_text, job_id)
    if isinstance(records, Mapping):
        nodes = tuple(r.times() for r in records.values() if r.first_seen is not None)
    else:
        nodes = records
    return timeline.JobTimes(
        job_id=str(job_id),
        submit=submit,
        queued=events.get("submit"),
        allocated=events.get("allocated"),
        script_start=marks.get("script_start"),
        script_end=marks.get("script_end"),
        nodes=nodes,
    )


def read_text(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------ leak checks


def pool_sizes(sysfs: Path = HUGEPAGES_SYSFS) -> dict[str, int]:
    """Page-size directory -> nr_hugepages (the machine-wide pools)."""
    sizes = {}
    if sysfs.is_dir():
        for entry in sorted(sysfs.iterdir()):
            try:
                sizes[entry.name] = int((entry / "nr_hugepages").read_text())
            except (OSError, ValueError):
                continue
    return sizes


def pool_growth(before: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    """Pools that are bigger now than before (size -> extra pages).  Pure."""
    return {
        size: now[size] - int(before[size])
        for size in now
        if size in before and now[size] > int(before[size])
    }


def node_leftovers(sandbox, node: str, job_id: str) -> list[str]:
    """What job ``job_id`` left on ``node``: domains, state/jobenv dirs, hugepage ledger, overlays, taps."""
    from .hugepages import LEDGER_SUBDIR, ledger_paths
    from .network import TAP_PREFIX

    found = []
    state_dir = sandbox.layout.node_state_dir(node)
    ledger_dir = sandbox.layout.node_runtime_dir(node) / LEDGER_SUBDIR
    for path in (
        state_dir / "jobs" / job_id,
        state_dir / "jobenv" / job_id,
        *map(Path, ledger_paths(str(ledger_dir), job_id)),
    ):
        if path.exists():
            found.append(f"{path} exists")
    overlays = [str(p) for p in state_dir.rglob("*.qcow2")] if state_dir.is_dir() else []
    found += [f"overlay {p}" for p in overlays]
    uri = sandbox.layout.libvirt_uri(node)
    result = subprocess.run(
        ["virsh", "-c", uri, "list", "--all", "--name"], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        found.append(f"cannot list domains on {node}: {result.stderr.strip()}")
    else:
        found += [f"domain {name}" for name in result.stdout.split() if name]
    netns = sandbox.layout.netns(node)
    links = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show"], capture_output=True, text=True, timeout=30
    )
    for line in links.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(TAP_PREFIX):
            found.append(f"tap {parts[1].strip().split('@')[0]}")
    return [f"{node}: {item}" for item in found]


def leftovers(sandbox, job_id: str, pools_before: Optional[Mapping[str, int]] = None) -> list[str]:
    """Everything job ``job_id`` left on any node of the sandbox, and hugepage pools still grown."""
    found = []
    for node in sandbox.nodes:
        found += node_leftovers(sandbox, node, job_id)
    if pools_before is not None:
        for size, extra in pool_growth(pools_before, pool_sizes()).items():
            found.append(f"hugepage pool {size} is {extra} page(s) larger than before the job")
    return found


# ------------------------------------------------------------------------------------ command line


def _cmd_watch(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args.name)
    watcher = JobWatcher(state_dirs(sandbox), args.job)
    done = watcher.run(lambda: job_finished(sandbox, args.job), args.timeout)
    data = watcher.to_json()
    data["submit"] = args.submit
    data["complete"] = done
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return 0 if done else 1


def _cmd_report(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args.name)
    data = json.loads(Path(args.timeline).read_text())
    records = {r["node"]: NodeRecord.from_json(r) for r in data["nodes"]}
    job = job_times(
        data["job_id"],
        float(data["submit"]),
        records,
        read_text(args.output),
        read_text(sandbox.layout.log / "slurmctld.log"),
    )
    print(timeline.format_table(job))
    if not data.get("complete"):
        print("  (teardown was not complete on every node when the watch ended)")
    return 0


def _cmd_pools(args: argparse.Namespace) -> int:
    print(json.dumps(pool_sizes(), sort_keys=True))
    return 0


def _cmd_leaks(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args.name)
    before = json.loads(Path(args.pools_before).read_text()) if args.pools_before else None
    deadline = time.monotonic() + args.timeout
    while True:
        found = leftovers(sandbox, str(args.job), before)
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(0.5)  # a finishing epilog, or surplus pages the kernel has yet to free
    for item in found:
        print(f"LEFT BEHIND: {item}")
    if not found:
        print(
            f"nothing left of job {args.job} on {', '.join(sandbox.nodes)}: no domain, state or jobenv "
            "dir, hugepage ledger, overlay or tap" + ("; hugepage pools back to their size" if before else "")
        )
    return 1 if found else 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm_vc.jobwatch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    watch = sub.add_parser("watch", help="poll the nodes until the job ended and was torn down")
    watch.add_argument("--name", required=True)
    watch.add_argument("--job", required=True)
    watch.add_argument("--submit", type=float, required=True, help="epoch seconds of the sbatch call")
    watch.add_argument("--out", required=True)
    watch.add_argument("--timeout", type=float, default=600)
    report = sub.add_parser("report", help="print the per-phase table")
    report.add_argument("--name", required=True)
    report.add_argument("--timeline", required=True)
    report.add_argument("--output", required=True, help="the job's output file")
    sub.add_parser("pools", help="print the hugepage pool sizes as JSON")
    leaks = sub.add_parser("leaks", help="list what the job left behind (exit 1 if anything)")
    leaks.add_argument("--name", required=True)
    leaks.add_argument("--job", required=True)
    leaks.add_argument("--pools-before")
    leaks.add_argument("--timeout", type=float, default=30)
    args = parser.parse_args(argv)
    handler = {"watch": _cmd_watch, "report": _cmd_report, "pools": _cmd_pools, "leaks": _cmd_leaks}
    try:
        return handler[args.command](args)
    except Exception as exc:  # a person reads this: one line, not a traceback
        print(f"jobwatch {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
