"""``slurm-vc epilog``: the Slurm Epilog.  Tears this node's guest down and unpublishes it.

Runs as root on every node after the job ends for any reason (normal end, failure, scancel, time
limit, prolog failure).  State that is already gone is not an error: the exit code is non-zero (and
Slurm drains the node) only when something that exists could not be removed, e.g. libvirtd is
unreachable with the guest still running.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import os

    from ..slurm import job_id_and_node_from_env

    if not os.environ.get("SPANK_VCLUSTER"):
        return 0  # not a --vcluster job (slurm-vc gc reaps anything left by other paths)
    job_id, node = job_id_and_node_from_env()
    return epilog(job_id, node, args.config)


def epilog(job_id: int, node: str, config_path=None) -> int:
    """Tear down job ``job_id`` on this node.  Returns the epilog's exit code.

    Both steps are always attempted: a job environment that cannot be removed must not keep the
    guest, its hugepages and its network running.  The exit code is the first failure's.
    """
    from .. import jobenv, lifecycle
    from ..config import load_config
    from ..errors import VcError

    try:
        config = load_config(config_path)
    except VcError as exc:
        print(f"slurm-vc epilog: job {job_id} on {node}: cannot tear down: {exc}", file=sys.stderr)
        return exc.exit_code
    codes = []
    # The job's key and table go first: whatever happens below, the user's access ends now.
    for what, step in (
        ("removing the job environment", lambda: jobenv.remove(config.state_dir, job_id)),
        ("teardown", lambda: lifecycle.run_epilog(job_id, config)),
    ):
        try:
            step()
        except Exception as exc:  # VcError, or an OSError of a step that met something unexpected
            print(f"slurm-vc epilog: job {job_id} on {node}: {what} failed: {exc}", file=sys.stderr)
            codes.append((exc.exit_code or 1) if isinstance(exc, VcError) else 1)
    return codes[0] if codes else 0
