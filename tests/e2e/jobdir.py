"""The e2e job user's working directory: where sbatch writes the test jobs' output."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path


def job_workdir(log_dir: Path, user: str) -> Path:
    """A new, empty working directory for the job user: ``<log_dir>/jobs``, owned by ``user``.

    Job output files are named by job id (``slurm-<id>.out``), and job ids repeat between sessions
    (a sandbox's ids derive from its name).  A directory shared between sessions (the user's home)
    would let a test read an earlier session's output of the same job id as its own.  This one is
    emptied first, goes with the sandbox, and is kept with its logs when a test failed.
    """
    workdir = log_dir / "jobs"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    entry = pwd.getpwnam(user)
    os.chown(workdir, entry.pw_uid, entry.pw_gid)
    workdir.chmod(0o755)
    return workdir
