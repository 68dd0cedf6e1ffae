"""Exclusive ``flock`` with a bounded wait: the node-wide locks of slurm-vc.

A lock that another slurm-vc process holds for longer than ``timeouts.lock`` is a StateError
(a node fault: something is stuck), never an endless wait inside a prolog.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from .errors import StateError


def flock_until(fd: int, what: str, timeout: float) -> None:
    """Take an exclusive flock on ``fd``, polling for at most ``timeout`` seconds.

    ``what`` names the lock in the error ("hugepage pool lock /sys/...").  Raises StateError when
    the wait runs out or the flock itself fails.
    """
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateError(f"cannot take the {what}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            raise StateError(f"{what} is held by another process for more than {timeout:g} s (timeouts.lock)")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@contextlib.contextmanager
def locked_file(path: str, what: str, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created, with its directory, if missing) for the block."""
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"cannot open the {what}: {exc.strerror}") from None
    try:
        flock_until(fd, what, timeout)
        yield
    finally:
        os.close(fd)  # also drops the flock


__all__ = ["flock_until", "locked_file"]
