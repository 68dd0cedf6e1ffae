"""``slurm-vc gc``: reap what belongs to jobs Slurm no longer runs, on this node.

What it looks at (all by job id):

- job state directories ``<state_dir>/jobs/<id>/``: torn down with the normal teardown, which
  destroys the domain, removes overlay/seed, releases hugepages and isolation rules;
- guests named ``vc-<id>-<node>`` with no state directory (a state wiped by hand, a bug);
- hugepage ledgers ``<runtime_dir>/hugepages/<id>.<state>.json`` and nftables isolation tables
  ``slurm_vc_<id>`` with no state directory;
- the job's published environment ``<state_dir>/jobenv/<id>/`` (key, hostfile).

Safe next to a live job's prolog (gc runs from the prolog, the epilog and a timer):

1. *Candidates first, live jobs second.*  gc lists state dirs, domains, ledgers and tables, and only
   then asks Slurm which jobs are live.  Anything that existed at listing time was made by a prolog
   that was already running, and Slurm shows a job as configuring/running before its prolog starts,
   so a live job's resources can never be missing from a live set taken afterwards.
2. *Never wait, never steal a lock.*  The prolog holds the job directory's flock from before its
   first resource until the guest is ready; gc only *tries* the lock and skips a locked job.  The
   epilog of that job will clean up, or the next gc.
3. *Recent activity is left alone.*  A state directory changed in the last ``--min-age`` seconds
   (default 60) and a guest whose QEMU started less than that ago are skipped, against a Slurm
   that is slow to show a brand-new job (controller failover, squeue from a cache).
4. *No answer from Slurm, no reaping.*  If the live set cannot be had, gc reaps nothing and fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

DEFAULT_MIN_AGE = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        help="only guests of this Slurm node (vc-<job>-NODE); default: every vc- guest on this libvirtd",
    )
    parser.add_argument(
        "--min-age",
        type=float,
        default=DEFAULT_MIN_AGE,
        help=f"leave resources younger than this many seconds alone (default {DEFAULT_MIN_AGE:.0f})",
    )
    parser.add_argument("--dry-run", action="store_true", help="only print what would be reaped")


@dataclass
class GcReport:
    """What one gc pass reaped (or would reap) and what it skipped, with reasons."""

    reaped: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Candidates:
    """Everything on this node that names a job id, listed before asking Slurm."""

    state_dirs: frozenset[int]
    domains: dict[str, int]  # domain name -> job id
    ledgers: frozenset[int]
    tables: frozenset[int]
    jobenvs: frozenset[int]


def list_candidates(config, node: Optional[str], env) -> Candidates:
    """List job-owned resources on this node (no Slurm involved)."""
    from .. import state
    from ..hugepages import HugepagePool
    from ..hypervisor import Hypervisor, parse_domain_name

    with Hypervisor(config.host.libvirt_uri) as hv:
        domains = {}
        for name in hv.list_domains():
            parsed = parse_domain_name(name)
            if parsed and (node is None or parsed[1] == node):
                domains[name] = parsed[0]
    pool = HugepagePool.from_config(config, sysfs_root=env.sysfs_root)
    ledgers = frozenset(int(ledger.job_id) for ledger in pool.list_ledgers() if ledger.job_id.isdigit())
    return Candidates(
        state_dirs=frozenset(int(job) for job in state.list_job_ids(config.state_dir)),
        domains=domains,
        ledgers=ledgers,
        tables=frozenset(_isolation_tables(env)),
        jobenvs=frozenset(_jobenv_ids(config.state_dir)),
    )


def _isolation_tables(env) -> list[int]:
    from ..errors import VcError
    from ..netdev import isolated_jobs

    try:
        return isolated_jobs(netns=env.netns)
    except (VcError, OSError):  # no nft on this node: nothing of ours there either
        return []


def _jobenv_ids(state_dir: str) -> list[int]:
    try:
        from ..jobenv import jobenv_root
    except ImportError:  # pragma: no cover - jobenv is part of the package
        return []
    try:
        return [int(name) for name in os.listdir(jobenv_root(state_dir)) if name.isdigit()]
    except FileNotFoundError:
        return []


def collect(
    config,
    live_job_ids: Callable[[], set[int]],
    *,
    node: Optional[str] = None,
    env=None,
    min_age: float = DEFAULT_MIN_AGE,
    dry_run: bool = False,
) -> GcReport:
    """One gc pass.  ``live_job_ids`` is asked *after* listing (see the module docstring)."""
    from .. import state
    from ..errors import VcError
    from ..lifecycle import Environment, teardown

    env = env or Environment()
    report = GcReport()
    candidates = list_candidates(config, node, env)
    live = set(live_job_ids())  # raises (SlurmError) rather than return a wrong empty set
    now = time.time()

    def act(what: str, action: Callable[[], object]) -> None:
        if dry_run:
            report.reaped.append(f"(dry run) {what}")
            return
        try:
            action()
            report.reaped.append(what)
        except VcError as exc:
            report.errors.append(f"{what}: {exc}")
        except Exception as exc:  # one job's unexpected failure must not stop the others' reaping
            report.errors.append(f"{what}: {type(exc).__name__}: {exc}")

    # 1. State directories: the normal teardown, without waiting for a lock.
    for job in sorted(candidates.state_dirs - live):
        if state.is_locked(config.state_dir, job):
            report.skipped.append(f"job {job}: state is locked by a running prolog/epilog")
            continue
        age = now - _last_change(state.job_dir(config.state_dir, job))
        if age < min_age:
            report.skipped.append(f"job {job}: state changed {age:.0f} s ago (< {min_age:.0f} s)")
            continue

        def reap_state(job=job):
            try:
                teardown(job, config, env, lock_timeout=0)
            except VcError as exc:
                if "locked by another" in str(exc):  # a prolog/epilog took it since we looked
                    report.skipped.append(f"job {job}: state became locked")
                    return
                raise

        act(f"job {job}: torn down from its state", reap_state)

    # Orphans: resources of dead jobs that had no state directory when we listed (the pass above
    # handled the others, or skipped them on purpose) and have none now (a prolog may have begun).
    handled = set(candidates.state_dirs) | {int(job) for job in state.list_job_ids(config.state_dir)}

    def orphans(ids: frozenset[int]) -> list[int]:
        return sorted(job for job in ids if job not in live and job not in handled)

    for name, job in sorted(candidates.domains.items()):
        if job in live or job in handled:
            continue
        age = _domain_age(config, name, now)
        if age is not None and age < min_age:
            report.skipped.append(f"guest {name}: started {age:.0f} s ago (< {min_age:.0f} s)")
            continue
        act(f"guest {name}: destroyed (no state)", lambda name=name: _destroy(config, name))
    for job in orphans(candidates.ledgers):
        act(f"job {job}: hugepages released (no state)", lambda job=job: _release_pages(config, env, job))
    for job in orphans(candidates.tables):
        act(f"job {job}: isolation rules removed (no state)", lambda job=job: _remove_table(env, job))
    for job in orphans(candidates.jobenvs):
        act(f"job {job}: job environment removed", lambda job=job: _remove_jobenv(config, job))
    return report


def _last_change(directory) -> float:
    """Newest mtime of the directory and its state file (the prolog writes it at every step)."""
    from ..state import STATE_FILE

    times = []
    for path in (directory, directory / STATE_FILE):
        try:
            times.append(os.stat(path).st_mtime)
        except FileNotFoundError:
            pass
    return max(times, default=0.0)


def _domain_age(config, name: str, now: float) -> Optional[float]:
    import psutil

    from ..errors import VcError
    from ..hypervisor import Hypervisor

    try:
        with Hypervisor(config.host.libvirt_uri) as hv:
            return now - psutil.Process(hv.qemu_pid(name)).create_time()
    except (VcError, psutil.Error):
        return None  # QEMU not visible from here (another PID namespace): rely on the job state


def _destroy(config, name: str) -> None:
    from ..hypervisor import Hypervisor

    with Hypervisor(config.host.libvirt_uri) as hv:
        hv.destroy(name)


def _release_pages(config, env, job: int) -> None:
    from ..hugepages import HugepagePool

    HugepagePool.from_config(config, sysfs_root=env.sysfs_root).release(str(job))


def _remove_table(env, job: int) -> None:
    from ..netdev import remove_isolation

    remove_isolation(job, netns=env.netns)


def _remove_jobenv(config, job: int) -> None:
    from .. import jobenv

    jobenv.remove(config.state_dir, job)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..slurm import live_job_ids

    config = load_config(args.config)
    # Liveness is asked cluster-wide, not for this node only: a node name that does not match
    # Slurm's (hostname vs NodeName) must make gc reap less, never more.
    report = collect(config, live_job_ids, node=args.node, min_age=args.min_age, dry_run=args.dry_run)
    for line in report.reaped:
        print(f"reaped: {line}")
    for line in report.skipped:
        print(f"skipped: {line}")
    for line in report.errors:
        print(f"slurm-vc gc: error: {line}", file=sys.stderr)
    return 1 if report.errors else 0
