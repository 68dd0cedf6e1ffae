"""Starting, finding and stopping the sandbox's daemons by PID, never by name.

A process is recorded as (pid, start time in clock ticks since boot) so a recycled PID is never hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class ProcRef:
    """A process identified by PID and start time."""

    pid: int
    start: int

    def to_json(self) -> dict:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: Mapping) -> ProcRef:
        return cls(int(data["pid"]), int(data["start"]))


def start_time(pid: int) -> Optional[int]:
    """The process's start time (field 22 of /proc/PID/stat), None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(ref: ProcRef) -> bool:
    """True when ``ref`` still names the same, living (non-zombie) process."""
    return start_time(ref.pid) == ref.start


def ref_of(pid: int) -> Optional[ProcRef]:
    started = start_time(pid)
    return None if started is None else ProcRef(pid, started)


def spawn(
    command: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    user: Optional[str] = None,
) -> ProcRef:
    """Start a foreground daemon detached from us (own session, stdio to ``log_path``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env),
            user=user,
            group=None if user is None else _primary_group(user),
        )
    started = None
    for _ in range(100):  # /proc/PID/stat appears at once; guard against a very early exit
        started = start_time(proc.pid)
        if started is not None:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    # Popen objects of daemons we will never wait for: forget them without a ResourceWarning.
    proc.returncode = 0 if started is not None else proc.poll()
    return ProcRef(proc.pid, started if started is not None else -1)


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid


def stop(refs: Iterable[ProcRef], timeout: float = 10.0) -> list[ProcRef]:
    """SIGTERM every living ``ref``, wait up to ``timeout``, then SIGKILL.  Returns those killed hard."""
    living = [ref for ref in refs if alive(ref)]
    for ref in living:
        _signal(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while living and time.monotonic() < deadline:
        living = [ref for ref in living if alive(ref)]
        if living:
            time.sleep(0.05)
    for ref in living:
        _signal(ref.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(ref) for ref in living) and time.monotonic() < deadline:
        time.sleep(0.05)
    return living


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pids_in_netns(netns_path: str) -> list[ProcRef]:
    """Every living process whose network namespace is the one bind-mounted at ``netns_path``."""
    try:
        target = os.stat(netns_path)
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            ref = ref_of(int(entry))
            if ref:
                found.append(ref)
    return found


def pids_with_arg(fragment: str, comms: Iterable[str]) -> list[ProcRef]:
    """Living processes named one of ``comms`` with an argument containing ``fragment``.

    Used by ``down`` to find the sandbox's daemons when the recorded state is lost; the name filter
    keeps it from ever hitting, say, an editor or a shell that merely mentions the base dir.
    """
    found = []
    own = os.getpid()
    names = set(comms)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if comm not in names:
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(fragment.encode() in arg for arg in args):
            ref = ref_of(int(entry))
            if ref:
                found.append(ref)
    return found
