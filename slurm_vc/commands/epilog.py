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

    from ..slurm import job_facts_from_env

    if not os.environ.get("SPANK_VCLUSTER"):
        return 0  # not a --vcluster job (slurm-vc gc reaps anything left by other paths)
    facts = job_facts_from_env()
    return epilog(facts.job_id, facts.node, args.config)


def epilog(job_id: int, node: str, config_path=None) -> int:
    """Tear down job ``job_id`` on this node.  Returns the epilog's exit code."""
    from .. import jobenv, lifecycle
    from ..config import load_config
    from ..errors import VcError

    try:
        config = load_config(config_path)
        # The job's key and table go first: whatever happens below, the user's access ends now.
        jobenv.remove(config.state_dir, job_id)
        lifecycle.run_epilog(job_id, config)
    except VcError as exc:
        print(f"slurm-vc epilog: job {job_id} on {node}: teardown failed: {exc}", file=sys.stderr)
        return exc.exit_code or 1
    except OSError as exc:
        print(f"slurm-vc epilog: job {job_id} on {node}: teardown failed: {exc}", file=sys.stderr)
        return 1
    return 0
