"""Per-job state on disk: what the prolog created, recorded before it was created.

Layout::

    <state_dir>/jobs/<job_id>/            mode 0711 (QEMU, running as another user, must reach its files)
        state.json                        {"version", "job_id", "meta": {...}, "resources": [...]}
        <guest files: overlay, seed, console log, ready channel>

Each resource is ``{"kind", "id", "details", "status"}`` with status ``planned`` (written just before
the actuator runs) or ``created`` (written after it returned).  Teardown undoes every recorded
resource whatever its status, in reverse order, so a crash between "planned" and "created" (or
between any two steps) leaves nothing behind that teardown cannot find.  Every undo tolerates a
resource that is already gone.

``state.json`` is replaced atomically (write to a temporary file, fsync, rename, fsync the
directory).  An exclusive ``flock`` on the job directory serialises the prolog, the epilog and
``slurm-vc gc`` for one job; ``gc`` only ever *tries* the lock (see slurm_vc/commands/gc.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .errors import StateError

STATE_VERSION = 1
STATE_FILE = "state.json"
JOBS_DIR = "jobs"
PLANNED = "planned"
CREATED = "created"
_JOB_ID_RE = re.compile(r"^[0-9]+\Z")


@dataclass
class Resource:
    """One thing the prolog made (or was about to make) that teardown must undo."""

    kind: str  # "hugepages" | "isolation" | "overlay" | "seed" | "domain" | ...
    id: str
    details: dict = field(default_factory=dict)
    status: str = PLANNED


def jobs_dir(state_dir: str | os.PathLike) -> Path:
    """The directory holding one sub-directory per job."""
    return Path(state_dir) / JOBS_DIR


def job_dir(state_dir: str | os.PathLike, job_id: int | str) -> Path:
    """The job's state directory."""
    check_job_id(job_id)
    return jobs_dir(state_dir) / str(job_id)


def list_job_ids(state_dir: str | os.PathLike) -> list[str]:
    """Job ids that have a state directory, sorted numerically."""
    return job_ids_in(jobs_dir(state_dir))


def job_ids_in(directory: str | os.PathLike) -> list[str]:
    """Names in ``directory`` that are job ids (digits only), sorted numerically; [] if it is absent."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted((name for name in names if _JOB_ID_RE.match(name)), key=int)


def check_job_id(job_id: int | str) -> None:
    """Raise StateError unless ``job_id`` is digits only (it becomes a path component)."""
    if not _JOB_ID_RE.match(str(job_id)):
        raise StateError(f"invalid job id {job_id!r}: expected digits only")


class JobState:
    """The state of one job, read and written while its directory is locked (see :func:`locked_job`)."""

    def __init__(self, directory: Path, job_id: str, data: dict):
        self.dir = directory
        self.job_id = job_id
        self._data = data

    # -- reading ---------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """Facts about the job and guest (node, image, timings) for status/teardown/gc."""
        return self._data.setdefault("meta", {})

    @property
    def resources(self) -> list[Resource]:
        """Recorded resources, oldest first."""
        return [Resource(**item) for item in self._data["resources"]]

    def find(self, kind: str, id: Optional[str] = None) -> Optional[Resource]:
        """The recorded resource of this kind (and id), or None."""
        for resource in self.resources:
            if resource.kind == kind and (id is None or resource.id == id):
                return resource
        return None

    # -- writing (each call is one atomic replace of state.json) ------------------------------
    def update_meta(self, **values: object) -> None:
        """Merge ``values`` into the job's meta data and write."""
        self.meta.update(values)
        self.save()

    def plan(self, kind: str, id: str, **details: object) -> Resource:
        """Record that a resource is about to be created.  Must be called *before* creating it."""
        items = self._data["resources"]
        for item in items:
            if item["kind"] == kind and item["id"] == id:
                item["details"].update(details)
                self.save()
                return Resource(**item)
        resource = Resource(kind, id, dict(details), PLANNED)
        items.append(asdict(resource))
        self.save()
        return resource

    def created(self, kind: str, id: str, **details: object) -> None:
        """Record that the resource now exists (with any details learnt while creating it)."""
        for item in self._data["resources"]:
            if item["kind"] == kind and item["id"] == id:
                item["status"] = CREATED
                item["details"].update(details)
                self.save()
                return
        raise StateError(f"job {self.job_id}: {kind} {id} was created but never planned")

    def forget(self, kind: str, id: str) -> None:
        """Drop a resource after it was undone."""
        before = len(self._data["resources"])
        self._data["resources"] = [
            item for item in self._data["resources"] if not (item["kind"] == kind and item["id"] == id)
        ]
        if len(self._data["resources"]) != before:
            self.save()

    def save(self) -> None:
        """Atomically replace state.json."""
        path = self.dir / STATE_FILE
        tmp = self.dir / f".{STATE_FILE}.tmp"
        try:
            with open(tmp, "w") as handle:
                json.dump(self._data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
            _fsync_dir(self.dir)
        except OSError as exc:
            raise StateError(f"cannot write job state {path}: {exc.strerror}") from None

    def remove(self) -> None:
        """Delete the job directory and everything in it (the last step of teardown)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        _fsync_dir(self.dir.parent)


def make_dirs(path: Path, mode: int) -> None:
    """``mkdir -p`` that gives every directory it creates ``mode`` whatever the process umask.

    slurmd's umask is the site's (077 on hardened nodes): a state_dir made with it would keep QEMU,
    which runs as another user, from reaching the guests' files, and every guest would fail to
    start.  Directories that already exist keep their mode (doctor checks them).
    """
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue  # made meanwhile by another prolog, with this mode
        os.chmod(directory, mode)  # mkdir's mode is masked by the umask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read(directory: Path, job_id: str) -> dict:
    path = directory / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": STATE_VERSION, "job_id": job_id, "meta": {}, "resources": []}
    except (OSError, ValueError) as exc:
        raise StateError(
            f"job state {path} is unreadable ({exc}); inspect it, clean up by hand and delete it"
        ) from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION or "resources" not in data:
        raise StateError(f"job state {path} has an unknown format (expected version {STATE_VERSION})")
    return data


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


@contextlib.contextmanager
def locked_job(
    state_dir: str | os.PathLike, job_id: int | str, *, create: bool, timeout: float = 30.0
) -> Iterator[Optional[JobState]]:
    """Lock the job's directory and yield its :class:`JobState`.

    With ``create=False`` yields None when the job has no state (nothing to undo).  Waits at most
    ``timeout`` seconds for another holder (prolog/epilog/gc) and then raises StateError.
    """
    job_id = str(job_id)
    directory = job_dir(state_dir, job_id)
    deadline = time.monotonic() + timeout
    while True:
        if create:
            try:
                make_dirs(jobs_dir(state_dir), 0o755)
                directory.mkdir(mode=0o711, exist_ok=True)
                os.chmod(directory, 0o711)  # mkdir's mode is masked by the umask
            except OSError as exc:
                raise StateError(f"cannot create job state directory {directory}: {exc.strerror}") from None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if create:
                continue  # removed between mkdir and open by a finishing teardown: make it again
            yield None
            return
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise StateError(
                        f"job {job_id}: state directory {directory} is locked by another slurm-vc process "
                        f"(prolog, epilog or gc) for more than {timeout:.0f} s"
                    )
                time.sleep(0.05)
            # A teardown may have removed the directory while we waited for its lock.
            try:
                same = os.stat(directory).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                if create:
                    continue
                yield None
                return
            yield JobState(directory, job_id, _read(directory, job_id))
            return
        finally:
            os.close(fd)  # closing the descriptor releases the flock


def is_locked(state_dir: str | os.PathLike, job_id: int | str) -> bool:
    """True when some process holds the job's lock right now (a running prolog/epilog)."""
    try:
        fd = os.open(job_dir(state_dir, job_id), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        if _try_lock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


def read_state(state_dir: str | os.PathLike, job_id: int | str) -> Optional[JobState]:
    """A read-only snapshot of a job's state without locking (for status displays), or None."""
    directory = job_dir(state_dir, job_id)
    if not directory.is_dir():
        return None
    return JobState(directory, str(job_id), _read(directory, str(job_id)))


__all__ = [
    "CREATED",
    "PLANNED",
    "JobState",
    "Resource",
    "is_locked",
    "job_dir",
    "jobs_dir",
    "list_job_ids",
    "locked_job",
    "make_dirs",
    "read_state",
]
