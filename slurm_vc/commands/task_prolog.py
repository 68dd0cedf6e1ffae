"""``slurm-vc task-prolog``: the Slurm TaskProlog.  Puts ``VC_*`` into every task of the job.

Runs as the job's user before each task (batch script included).  Its stdout is read by Slurm:
``export NAME=value`` sets a variable in the task, ``print TEXT`` writes TEXT to the task's stdout.
A non-zero exit fails the task, which is how a user-fault prolog failure ends the job with its
reason in the job's output (and no node is drained).  Must stay cheap: no pydantic, no Slurm call
except for the batch step.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, TextIO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    return task_prolog(os.environ, sys.stdout, args.config)


def _say(out: TextIO, text: str) -> None:
    for line in text.splitlines() or [""]:
        out.write(f"print {line}\n")


def task_prolog(environ, out: TextIO, config_path: Optional[str] = None) -> int:
    """Write the TaskProlog protocol to ``out``; return its exit code."""
    from .. import jobenv
    from ..errors import VcError

    if not (environ.get("SLURM_SPANK_VCLUSTER") or environ.get("SPANK_VCLUSTER")):
        return 0
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    try:
        state_dir = jobenv.state_dir_from_file(config_path or environ.get(jobenv.CONFIG_ENV) or None)
        view = jobenv.load(jobenv.jobenv_dir(state_dir, job_id or "x"))
    except VcError as exc:
        _say(out, f"slurm-vc: job {job_id}: the virtual cluster is not available on this node: {exc}")
        return 1
    if view.local.state == jobenv.FAILED:
        _say(out, view.local.error or f"slurm-vc: job {job_id}: the guest on this node failed")
        return 1
    if "SLURM_STEP_ID" not in environ and len(view.guests) > 1:
        # The batch step of a multi-node job: a prolog on another node may have failed with a user
        # fault.  It put the reason into the job's Comment before the batch script could start
        # (DeferBatch).  A one-node job has no other prolog: no Slurm call before its script.
        # Tasks see SLURM_RESTART_COUNT; the prolog (which wrote the prefix) SLURM_JOB_RESTART_COUNT.
        restarts = environ.get("SLURM_RESTART_COUNT") or environ.get("SLURM_JOB_RESTART_COUNT") or "0"
        failure = _peer_failure(int(view.job_id), restarts)
        if failure:
            _say(out, failure)
            return 1
    for line in jobenv.task_prolog_lines(view):
        out.write(line + "\n")
    return 0


def _peer_failure(job_id: int, restart_count: str) -> Optional[str]:
    from .. import slurm
    from ..errors import SlurmError
    from .prolog import comment_prefix

    try:
        comment = slurm.job_comment(job_id)
    except SlurmError:
        return None  # cannot ask: let the job run; a missing guest shows up when it is used
    prefix = comment_prefix(int(restart_count) if restart_count.isdigit() else 0)
    return comment if comment.startswith(prefix) else None


if __name__ == "__main__":
    # The TaskProlog script runs this module directly: half the start-up time of the full CLI,
    # which matters because it runs before every task of every step.
    sys.exit(task_prolog(os.environ, sys.stdout))
