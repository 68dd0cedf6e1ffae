"""Hugepage pool manager: grow and shrink per-NUMA-node pools by exactly what each job needs.

The actuator behind the plan's ``hugepages`` field.  ``HugepagePool.reserve(job, size, {node: pages})``
grows each NUMA node's pool through sysfs, checks what the kernel really gave, compacts memory and
retries a bounded number of times, and rolls every touched node back if it still falls short.
``release(job)`` (or ``Reservation.release()``) undoes exactly what the job added.  Several jobs on
one node grow and shrink the same pools independently; each keeps a ledger, and one lock serialises
every change.

Files::

    <sysfs>/devices/system/node/nodeN/hugepages/hugepages-<KB>kB/{nr,surplus}_hugepages
    <sysfs>/devices/system/node/nodeN/compact       (else <proc>/sys/vm/compact_memory)
    <sysfs>/devices/system/node                     exclusive flock, bounded wait -> StateError
    <ledger_dir>/<job_id>.growing.json              one ledger per job: the intent, one write(2)
    <ledger_dir>/<job_id>.held.json                 renamed from growing; a release record is appended
    <ledger_dir>/.lock                              the lock instead, only if the sysfs dir is missing

Under the lock, an operation opens each pool's ``nr_hugepages`` (read-write) and
``surplus_hugepages`` once, reads them with pread and writes ``nr_hugepages`` with pwrite, both at
offset 0 (sysfs shows an attribute's current value at every read at offset 0), and closes them
when it lets the lock go.

``HugepagePool.from_config`` puts the ledgers in ``<runtime_dir>/hugepages`` (``/run/slurm-vc``):
they describe pools that do not survive a reboot either, and a tmpfs keeps their three writes per
job off the disk (``slurm-vc doctor`` warns when it is not a tmpfs).  A bare
``HugepagePool(state_dir)`` uses ``<state_dir>/hugepages``.

One lock per kernel
-------------------
``reserve`` and ``release`` hold an flock on the sysfs node directory (reading ledgers takes no
lock: every file is complete when it appears).  The flock serialises every manager of one
kernel's pools, whatever its ledger directory (several simulated nodes on one machine, tests next
to production), so their read-modify-writes of nr_hugepages never lose an update, and it serialises
every manager of one ledger directory, since a ledger directory belongs to one kernel.  Each ledger
records its manager's sysfs root; a manager that finds a ledger of another sysfs root in its
directory refuses to go on (StateError) rather than apply another kernel's ledger to its pools.
Writers that bypass the manager are not covered.

A ledger moves ``growing -> held -> releasing -> (deleted)``:

* ``growing``: ``<job>.growing.json`` is created (``O_EXCL``) and written by one write(2) before the
  first pool write.  A growing file that is empty or cannot be parsed therefore means its writer died
  before it changed any pool; whoever finds it under the lock removes it.
* ``held``: a grow that got exactly its target on every node (the normal case) renames the growing
  file to ``<job>.held.json``, content unchanged: a held file whose record still says ``growing``
  reads as held with ``added = target - before`` on every node.  Otherwise the held record is written
  in full to a new file (tmp + rename), then the growing file is unlinked.
* ``releasing``: the release targets are appended to the held file as a second line, by one write(2)
  before the first shrink; a held file with a complete release line reads as releasing.  A torn
  release line (the writer died in that write, before any shrink) is ignored: the ledger is held.
* deleted once every pool is shrunk.

No rename ever replaces an existing file, which on ext4 (a runtime_dir that is not a tmpfs) would
start writeback and make the next unlink wait for the disk.  If a crash leaves two files of one
job, the more advanced state is the truth (it was written later); the next locked operation removes
the other.  (Versions before the appended release line wrote ``<job>.releasing.json``; such a file
is still read, as the more advanced state.)

Counting in persistent pages
----------------------------
sysfs ``nr_hugepages`` counts persistent *and* surplus pages, but a write to it sets the persistent
count: pages still in use above the new value become "surplus" and the kernel frees them when their
user (a guest being torn down) lets go.  Every decision here is therefore made on the persistent
count ``P = nr_hugepages - surplus_hugepages``:

* Grow writes ``nr_hugepages + asked`` (``= P + S + asked``).  The kernel first turns the ``S``
  surplus pages back into persistent ones, then allocates ``asked`` fresh pages, so the job has its
  pages free at once even while an earlier job's guest still holds surplus pages.  The job's
  contribution ``added`` is what it observes: ``P_after - P_before`` (normally ``S + asked``).  The
  ``S`` adopted pages were already released by their owner; the adopting job sheds them at release,
  which is what their owner wanted.
* Release writes ``P_now - added``, never below the sum of what the other live ledgers on that node
  hold (only an outside writer can push it there), never above ``P_now``.  Pages a still-running
  guest uses are not a floor: the kernel keeps them as surplus and frees them later.

Crash safety
------------
A ledger is written before the pool changes and every pool change happens under the lock, so a
ledger left in a transitional state when the lock is free means its writer died.  Whoever takes
the lock next settles such ledgers first, before changing anything else, so the observations below
see only the dead writer's work (plus outside writers, which no scheme can tell apart):

* ``growing`` (written before the first sysfs write; records per node ``before`` = P, the surplus
  ``S``, ``asked`` and the ``target`` written): the writer may have died before any write, after
  some, or mid-rollback.  Its contribution on a node is at most ``target - before`` (``S + asked``)
  and at most what is observed, ``P_now - before``.  Settling subtracts
  ``min(S + asked, max(0, P_now - before))`` and deletes the ledger: conservative, since it never
  removes more than the job could have added, and a pool an outsider shrank is not shrunk further.
  The reservation never returned, so no guest relies on those pages; ``reserve`` may simply be run
  again.  A later ``release`` of that job is a no-op.
* ``releasing`` (appended before the first shrink; records ``release_from`` = P then and the
  ``release_target``): the shrink is finished by writing ``P_now - min(P_now - target,
  release_from - target)`` where positive, so a crash after the sysfs write never subtracts twice.

A ledger must survive a crash of its process, which the rename gives (the page cache outlives the
process), not of the kernel: a hugepage pool does not survive a reboot, so each ledger records the
kernel's boot id, and a ledger from an earlier boot describes nothing and is dropped without
touching the pools.  A ledger that cannot be parsed and predates the current boot (a torn write at
a power cut, on a disk) is dropped likewise; one from the current boot is a StateError for the
admin.  Hence no fsync by default.

Not covered: a process writing sysfs directly (bypassing the manager) between our read and our
write; on hosts with several NUMA nodes, the kernel's per-node write counts other nodes' surplus
pages too, so while another node has surplus pages a grow may add a few more than asked (observed,
so given back at release) and a shrink may leave a few behind; it never takes pages a job holds.
A crashed reservation is settled by the next manager that uses its ledger directory; a manager
with another directory may grow the same pool first, and the settling observation then includes
that growth (still capped at ``S + asked``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .errors import HugepageError, StateError, VcError
from .filelock import flock_until
from .units import GIB, KIB, MIB, format_size

if TYPE_CHECKING:  # pragma: no cover
    from .config import SiteConfig

log = logging.getLogger(__name__)

SUPPORTED_PAGE_SIZES = (2 * MIB, GIB)
LEDGER_VERSION = 1
LEDGER_SUBDIR = "hugepages"  # under runtime_dir (from_config) or state_dir (a bare HugepagePool)
STATES = ("growing", "held", "releasing")  # in the order a ledger moves through them
_RANK = {state: rank for rank, state in enumerate(STATES)}
_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # fullmatch: "$" would allow a final "\n"
_JSON_DECODER = json.JSONDecoder()
_JSON_STR = json.encoder.encode_basestring_ascii  # C where available: a quoted, escaped JSON string


class SysfsIO:
    """The writer interface: every read and write of a sysfs/procfs integer goes through here.

    Tests inject a fake kernel (a subclass) to simulate fragmentation and crashes; the manager's code
    path stays the same.  A locked operation opens each pool's two files once (``open``) and then
    reads and writes them at offset 0 (``pread_int``, ``pwrite_int``): sysfs regenerates an
    attribute's text on every read at offset 0, so a pread after a write shows the new value.
    ``read_int`` and ``write_int`` are the one-shot forms (open, read or write, close).
    """

    def open(self, path: str, writable: bool = False) -> int:
        """Open an attribute for ``pread_int``, and for ``pwrite_int`` too if ``writable``."""
        return os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        os.close(fd)

    def pread_int(self, fd: int) -> int:
        """The integer an open attribute shows now (sysfs prints a number and a newline)."""
        return int(os.pread(fd, 64, 0).strip() or b"0")

    def pwrite_int(self, fd: int, value: int) -> None:
        """Write one integer with a single write(2) at offset 0, as the kernel expects for sysfs."""
        os.pwrite(fd, b"%d" % value, 0)

    def read_int(self, path: str) -> int:
        """Read one integer file."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 64).strip() or b"0")
        finally:
            os.close(fd)

    def write_int(self, path: str, value: int) -> None:
        """Write one integer file, opened write-only (``compact_memory`` cannot be read)."""
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"%d" % value)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class PoolCounts:
    """One node's pool of one page size, as sysfs shows it."""

    nr: int  # nr_hugepages: persistent + surplus
    free: int  # free_hugepages
    surplus: int  # surplus_hugepages: in use above the persistent count, freed when let go

    @property
    def persistent(self) -> int:
        """The pool size an nr_hugepages write sets."""
        return self.nr - self.surplus


@dataclass
class NodeEntry:
    """One NUMA node's part of a ledger."""

    before: int  # persistent pages before the grow
    surplus_before: int  # surplus pages then (adopted by the grow)
    asked: int  # fresh pages the plan needs
    target: int  # value written to nr_hugepages
    added: Optional[int] = None  # persistent pages the job added, as observed (None while growing)
    release_from: Optional[int] = None  # persistent pages when the release began
    release_target: Optional[int] = None  # persistent pages the release writes


@dataclass
class Ledger:
    """What one job did to the pools.  ``state``: growing -> held -> releasing -> (deleted)."""

    job_id: str
    page_size: int
    state: str
    boot_id: str
    nodes: dict[int, NodeEntry] = field(default_factory=dict)
    sysfs: str = ""  # the sysfs root of the pools ("" in ledgers written before it was recorded)
    file_state: str = field(default="", compare=False)  # the state in its file's name (not stored)

    def to_json(self) -> str:
        """The ledger as one line of JSON (no newline anywhere: a release line may follow it)."""
        # Formatted here rather than by json.dumps of a dict, which costs several times more on the
        # hot path: the values are integers, None and three strings (escaped by json's encoder).
        nodes = ",".join(
            f'"{node:d}":{{"before":{e.before:d},"surplus_before":{e.surplus_before:d},'
            f'"asked":{e.asked:d},"target":{e.target:d},"added":{_json_int(e.added)},'
            f'"release_from":{_json_int(e.release_from)},"release_target":{_json_int(e.release_target)}}}'
            for node, e in sorted(self.nodes.items())
        )
        return (
            f'{{"version":{LEDGER_VERSION:d},"job_id":{_JSON_STR(self.job_id)},"page_size":{self.page_size:d},'
            f'"state":{_JSON_STR(self.state)},"boot_id":{_JSON_STR(self.boot_id)},'
            f'"sysfs":{_JSON_STR(self.sysfs)},"nodes":{{{nodes}}}}}'
        )

    def release_json(self) -> str:
        """The release line appended to a held file: per node ``[release_from, release_target]``."""
        pairs = ",".join(
            f'"{node:d}":[{e.release_from:d},{e.release_target:d}]' for node, e in sorted(self.nodes.items())
        )
        return f'{{"release":{{{pairs}}}}}'

    def apply_release(self, release: dict[int, tuple[int, int]]) -> None:
        """Read as releasing with these targets (from a held file's release line)."""
        if set(release) != set(self.nodes):
            raise ValueError(f"release line names nodes {sorted(release)}, the ledger {sorted(self.nodes)}")
        for node, (release_from, target) in release.items():
            self.nodes[node].release_from, self.nodes[node].release_target = release_from, target
        self.state = "releasing"

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        # raw_decode is json.loads without its Python wrappers (ledgers are read on the hot path);
        # the check after it is what loads adds: nothing may follow the object.
        data, end = _JSON_DECODER.raw_decode(text)
        if end != len(text) or not isinstance(data, dict):
            raise ValueError("not one JSON object")
        if data.get("version") != LEDGER_VERSION or data.get("state") not in STATES:
            raise ValueError("unknown ledger version or state")
        nodes = {int(node): NodeEntry(**entry) for node, entry in data["nodes"].items()}
        return cls(
            str(data["job_id"]),
            int(data["page_size"]),
            data["state"],
            str(data["boot_id"]),
            nodes,
            str(data.get("sysfs", "")),
        )


@dataclass(frozen=True)
class Reservation:
    """Hugepages one job holds; ``release()`` is the undo."""

    job_id: str
    page_size: int
    pages: dict[int, int]  # NUMA node -> pages the plan asked for
    added: dict[int, int]  # NUMA node -> persistent pages added (asked + adopted surplus)
    pool: HugepagePool = field(repr=False, compare=False)

    def release(self) -> None:
        """Give the pages back (idempotent)."""
        self.pool.release(self.job_id)


def _json_int(value: Optional[int]) -> str:
    return "null" if value is None else f"{value:d}"


def parse_release_line(tail: str) -> Optional[dict[int, tuple[int, int]]]:
    """The last complete release line after a held ledger's first line, None if there is none (pure).

    A line that does not parse is a release whose writer died in its write(2), before any shrink:
    it is ignored (see the module docstring).
    """
    for line in reversed(tail.split("\n")):
        try:
            data, end = _JSON_DECODER.raw_decode(line)
            if end != len(line):
                continue
            return {int(node): (int(pair[0]), int(pair[1])) for node, pair in data["release"].items()}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return None


def page_size_label(page_size: int) -> str:
    """2097152 -> '2M'."""
    return format_size(page_size)


def pool_dir(sysfs_root: str, node: int, page_size: int) -> str:
    """The sysfs directory of one node's pool of one page size."""
    return os.path.join(
        sysfs_root, "devices/system/node", f"node{node}", "hugepages", f"hugepages-{page_size // KIB}kB"
    )


def ledger_dir_of(config: SiteConfig) -> str:
    """Where the site's hugepage ledgers live: ``<runtime_dir>/hugepages``."""
    return f"{config.runtime_dir.rstrip('/')}/{LEDGER_SUBDIR}"


def ledger_name(job_id: str, state: str) -> str:
    """The file name of ``job_id``'s ledger in ``state`` (pure)."""
    return f"{job_id}.{state}.json"


def ledger_paths(ledger_dir: str, job_id: str | int) -> list[str]:
    """Every path a ledger of ``job_id`` can have, one per state (pure; for leftover checks)."""
    return [os.path.join(ledger_dir, ledger_name(str(job_id), state)) for state in STATES]


def parse_ledger_name(name: str) -> Optional[tuple[str, str]]:
    """``'42.held.json'`` -> ``('42', 'held')``; None for the lock, temporary and foreign files (pure)."""
    if not name.endswith(".json"):
        return None
    job_id, _, state = name[:-5].rpartition(".")
    return (job_id, state) if state in _RANK and _JOB_ID_RE.fullmatch(job_id) else None


def release_target(persistent_now: int, added: int, held_by_others: int) -> int:
    """Persistent pool size after a job that added ``added`` pages lets go (pure).

    Subtract exactly what the job added, never below what the other ledgers hold, never grow.
    """
    return min(persistent_now, max(persistent_now - added, held_by_others))


def growth_to_undo(persistent_now: int, entry: NodeEntry) -> int:
    """Pages an interrupted grow added on one node, counted conservatively (pure).

    At most what the grow could have added (``target - before``), at most what is observed.
    """
    return min(entry.target - entry.before, max(0, persistent_now - entry.before))


class HugepagePool:
    """Per-job hugepage reservations on this host's NUMA nodes.  See the module docstring.

    One operation at a time per manager (the pool files of the current one are kept on it): give
    each thread its own manager.
    """

    def __init__(
        self,
        state_dir: str,
        sysfs_root: str = "/sys",
        lock_timeout: float = 30.0,
        compact_retries: int = 3,
        *,
        proc_root: str = "/proc",
        io: Optional[SysfsIO] = None,
        fsync: bool = False,
        ledger_dir: Optional[str] = None,
    ):
        self.state_dir = state_dir
        self.ledger_dir = ledger_dir or f"{state_dir.rstrip('/')}/{LEDGER_SUBDIR}"
        self.sysfs_root = os.path.normpath(sysfs_root)
        self.proc_root = proc_root
        self.lock_timeout = lock_timeout
        self.compact_retries = compact_retries
        self.io = io or SysfsIO()
        # The ledger must survive a crash of the process (the page cache does), not of the kernel:
        # a power cut or reboot empties the pools too, and ledgers from an earlier boot are dropped
        # by boot id.  So fsync buys nothing and costs 3-20 ms per reserve+release; off by default.
        self.fsync = fsync
        self._node_root = f"{self.sysfs_root.rstrip('/')}/devices/system/node"
        self._boot_id_cache: Optional[str] = None
        self._locked = False  # inside a locked operation: only then may a torn intent be removed
        # The pools' nr_hugepages (read-write) and surplus_hugepages, opened once per locked operation
        # and closed when it ends (see _pool_files).
        self._files: dict[tuple[int, int], tuple[int, int]] = {}

    @classmethod
    def from_config(cls, config: SiteConfig, **kwargs) -> HugepagePool:
        """The site's pool manager: ledgers in ``<runtime_dir>/hugepages``, the site's timeouts."""
        kwargs.setdefault("ledger_dir", ledger_dir_of(config))
        return cls(
            config.state_dir,
            lock_timeout=config.timeouts.lock,
            compact_retries=config.timeouts.hugepage_compact_retries,
            **kwargs,
        )

    # ----------------------------------------------------------------- public API

    def counts(self, node: int, page_size: int) -> PoolCounts:
        """Read one node's pool.  Raises HugepageError if the kernel has no such pool."""
        directory = self._checked_pool_dir(node, page_size)
        try:
            return PoolCounts(
                nr=self.io.read_int(f"{directory}/nr_hugepages"),
                free=self.io.read_int(f"{directory}/free_hugepages"),
                surplus=self.io.read_int(f"{directory}/surplus_hugepages"),
            )
        except (OSError, ValueError) as exc:
            raise HugepageError(f"cannot read hugepage pool {directory}: {exc}") from None

    def reserve(self, job_id: str | int, page_size: int, pages_per_node: dict[int, int]) -> Reservation:
        """Grow each node's pool by ``pages_per_node[node]`` pages of ``page_size`` bytes for ``job_id``.

        Idempotent for the same request (a re-run prolog gets the existing reservation).  On a
        shortfall after ``compact_retries`` compactions every touched node is restored and
        HugepageError names the node, the pages wanted and the pages the kernel gave.
        """
        job_id = _job_id(job_id)
        if page_size not in SUPPORTED_PAGE_SIZES:
            raise HugepageError(
                f"hugepage size {page_size} bytes is not supported: use 2M ({2 * MIB}) or 1G ({GIB})"
            )
        wanted = {}
        for node, pages in sorted(pages_per_node.items()):
            if not isinstance(node, int) or node < 0 or not isinstance(pages, int) or pages < 0:
                raise HugepageError(f"invalid hugepage plan {pages_per_node!r}: want {{node: pages}} >= 0")
            if pages:
                wanted[node] = pages
        fd, held = self._lock()
        try:
            return self._reserve_locked(job_id, page_size, wanted, held)
        finally:
            self._unlock(fd)

    def release(self, job_id: str | int) -> None:
        """Shrink the pools by exactly what ``job_id`` added and delete its ledger.  No-op if none."""
        job_id = _job_id(job_id)
        fd, held = self._lock()
        try:
            # _lock settled interrupted ledgers, so this one (if any) is "held".
            ledger = held.pop(job_id, None)
            if ledger is not None:
                self._release_locked(ledger, list(held.values()))
        finally:
            self._unlock(fd)

    def _reserve_locked(
        self, job_id: str, page_size: int, wanted: dict[int, int], held: dict[str, Ledger]
    ) -> Reservation:
        """``reserve`` under the lock; ``held``: the settled ledgers by job id."""
        existing = held.get(job_id)
        if existing is not None:
            asked = {node: entry.asked for node, entry in existing.nodes.items()}
            if existing.page_size == page_size and asked == wanted:
                return self._reservation(existing)
            raise StateError(
                f"job {job_id} already holds {self._describe(existing)}; release it before reserving"
                f" {sum(wanted.values())} x {page_size_label(page_size)} again"
            )
        ledger = Ledger(job_id, page_size, "growing", self._boot_id(), sysfs=self.sysfs_root)
        for node, pages in wanted.items():
            nr, surplus = self._read_pool(node, page_size)
            ledger.nodes[node] = NodeEntry(
                before=nr - surplus, surplus_before=surplus, asked=pages, target=nr + pages
            )
        self._write_intent(ledger)  # before any pool changes
        try:
            for node, entry in ledger.nodes.items():
                entry.added = self._grow_node(node, page_size, entry)
        except HugepageError as failure:
            try:
                self._undo_growth(ledger)
            except VcError as undo_failure:
                raise HugepageError(
                    f"{failure}; but the rollback failed too ({undo_failure}): the next reservation"
                    " or release on this host retries it"
                ) from None
            raise
        if all(entry.added == entry.target - entry.before for entry in ledger.nodes.values()):
            self._rename_ledger(ledger, "held")  # the growing record says it all (see _read_file)
        else:
            self._write_ledger(ledger, "held")
        return self._reservation(ledger)

    def _release_locked(self, ledger: Ledger, others: list[Ledger]) -> None:
        """``release`` of a held ledger under the lock; ``others``: the other jobs' held ledgers."""
        job_id = ledger.job_id
        for node, entry in ledger.nodes.items():
            held_by_others = sum(
                other.nodes[node].added or 0
                for other in others
                if other.page_size == ledger.page_size and node in other.nodes
            )
            nr, surplus = self._read_pool(node, ledger.page_size)
            now = nr - surplus
            entry.release_from = now
            entry.release_target = release_target(now, entry.added or 0, held_by_others)
            if entry.release_target > now - (entry.added or 0):
                log.warning(
                    "hugepages: node %d: job %s added %d pages but only %d can go without touching"
                    " other jobs' pages (the pool was shrunk from outside)",
                    node,
                    job_id,
                    entry.added or 0,
                    now - entry.release_target,
                )
        self._append_release(ledger)
        # Under the lock since the reads above: P is still release_from on every node.
        self._finish_release(ledger, observed=True)

    def ledger(self, job_id: str | int) -> Optional[Ledger]:
        """The job's ledger as last written, or None (no lock taken: see _read_job)."""
        return self._read_job(_job_id(job_id))

    def list_ledgers(self) -> list[Ledger]:
        """Every ledger, sorted by job id (for gc: release the jobs that no longer run)."""
        return self._all_ledgers()[0]

    # ----------------------------------------------------------------- growing and shrinking

    def _pool_dir(self, node: int, page_size: int) -> str:
        """The sysfs directory of one pool (as ``pool_dir``, without its path joins)."""
        return f"{self._node_root}/node{node}/hugepages/hugepages-{page_size // KIB}kB"

    def _pool_files(self, node: int, page_size: int) -> tuple[int, int]:
        """nr_hugepages (open read-write) and surplus_hugepages of one pool, opened on its first use
        in a locked operation and closed by the ``_unlock`` that ends it."""
        files = self._files.get((node, page_size))
        if files is None:
            files = self._files[(node, page_size)] = self._open_pool(node, page_size)
        return files

    def _open_pool(self, node: int, page_size: int) -> tuple[int, int]:
        directory = self._pool_dir(node, page_size)
        try:
            nr_fd = self.io.open(f"{directory}/nr_hugepages", writable=True)
            try:
                return nr_fd, self.io.open(f"{directory}/surplus_hugepages")
            except BaseException:
                self.io.close(nr_fd)
                raise
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                self._checked_pool_dir(node, page_size)  # names a missing node or page size
            raise HugepageError(f"cannot open hugepage pool {directory}: {exc.strerror or exc}") from None

    def _close_pool_files(self) -> None:
        files, self._files = self._files, {}
        for nr_fd, surplus_fd in files.values():
            self.io.close(nr_fd)
            self.io.close(surplus_fd)

    def _read_pool(self, node: int, page_size: int) -> tuple[int, int]:
        """nr_hugepages and surplus_hugepages: all the decisions need (P = nr - surplus)."""
        nr_fd, surplus_fd = self._pool_files(node, page_size)
        try:
            return self.io.pread_int(nr_fd), self.io.pread_int(surplus_fd)
        except (OSError, ValueError) as exc:
            directory = self._pool_dir(node, page_size)
            raise HugepageError(f"cannot read hugepage pool {directory}: {exc}") from None

    def _persistent(self, node: int, page_size: int) -> int:
        nr, surplus = self._read_pool(node, page_size)
        return nr - surplus

    def _grow_node(self, node: int, page_size: int, entry: NodeEntry) -> int:
        """Write the target, compact and retry if short; return the persistent pages added."""
        attempt = 0
        while True:
            self._write(node, page_size, entry.target)
            now = self._persistent(node, page_size)
            if now >= entry.target:
                return now - entry.before
            if attempt >= self.compact_retries:
                got = max(0, now - entry.before - entry.surplus_before)
                raise HugepageError(
                    f"NUMA node {node}: wanted {entry.asked} more {page_size_label(page_size)} hugepages,"
                    f" the kernel gave {got} after {attempt} compaction retries (memory too fragmented"
                    " or too little free); the pools this reservation touched are restored"
                )
            attempt += 1
            log.info(
                "hugepages: node %d short by %d pages, compacting (retry %d/%d)",
                node,
                entry.target - now,
                attempt,
                self.compact_retries,
            )
            self._compact(node)

    def _compact(self, node: int) -> None:
        per_node = os.path.join(self._node_root, f"node{node}", "compact")
        path = per_node if os.path.exists(per_node) else os.path.join(self.proc_root, "sys/vm/compact_memory")
        try:
            self.io.write_int(path, 1)
        except OSError as exc:  # compaction is best effort: the retry still re-reads the pool
            log.warning("hugepages: cannot compact memory via %s: %s", path, exc.strerror)

    def _undo_growth(self, ledger: Ledger) -> None:
        """Undo a grow that failed or was interrupted (see the module docstring), delete the ledger."""
        for node, entry in ledger.nodes.items():
            now = self._persistent(node, ledger.page_size)
            remove = growth_to_undo(now, entry)
            if remove:
                self._write(node, ledger.page_size, now - remove)
        self._delete_ledger(ledger)

    def _finish_release(self, ledger: Ledger, observed: bool = False) -> None:
        """Complete a release (also one interrupted by a crash, see the docstring), delete the ledger.

        ``observed``: the caller read every pool's P (``release_from``) under the lock it still
        holds, so it is not read again.
        """
        for node, entry in ledger.nodes.items():
            if entry.release_target is None or entry.release_from is None:
                raise StateError(f"ledger of job {ledger.job_id} is 'releasing' without targets")
            now = entry.release_from if observed else self._persistent(node, ledger.page_size)
            remove = min(now - entry.release_target, entry.release_from - entry.release_target)
            if remove > 0:
                self._write(node, ledger.page_size, now - remove)
        self._delete_ledger(ledger)

    def _write(self, node: int, page_size: int, value: int) -> None:
        """Set the pool's nr_hugepages (its persistent count, see the module docstring)."""
        nr_fd = self._pool_files(node, page_size)[0]
        try:
            self.io.pwrite_int(nr_fd, value)
        except OSError as exc:
            path = f"{self._pool_dir(node, page_size)}/nr_hugepages"
            raise HugepageError(f"cannot write {value} to {path}: {exc.strerror or exc}") from None

    def _checked_pool_dir(self, node: int, page_size: int) -> str:
        directory = pool_dir(self.sysfs_root, node, page_size)
        if not os.path.isdir(directory):
            node_dir = os.path.join(self._node_root, f"node{node}")
            if not os.path.isdir(node_dir):
                raise HugepageError(f"NUMA node {node} does not exist on this host ({node_dir} is missing)")
            raise HugepageError(
                f"the kernel offers no {page_size_label(page_size)} hugepages on NUMA node {node}"
                f" ({directory} is missing)"
            )
        return directory

    # ----------------------------------------------------------------- ledgers and the lock

    def _lock(self) -> tuple[int, dict[str, Ledger]]:
        """Take the kernel's pool lock and settle the ledgers whose writer died (see the docstring).

        Returns the lock's file descriptor, for the ``_unlock`` that ends the operation (in a
        ``finally``), and the remaining ledgers, all "held", by job id.
        """
        fd, what = self._open_lock()
        try:
            flock_until(fd, what, self.lock_timeout)
            self._locked = True
            return fd, self._settle()
        except BaseException:
            self._unlock(fd)
            raise

    def _unlock(self, fd: int) -> None:
        """End a locked operation: close the pool files it opened, then drop the lock."""
        self._locked = False
        try:
            self._close_pool_files()
        finally:
            os.close(fd)  # also drops the flock

    def _open_lock(self) -> tuple[int, str]:
        """The sysfs node directory (one lock per kernel), else ``<ledger_dir>/.lock``."""
        try:
            return os.open(self._node_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), (
                f"hugepage pool lock {self._node_root}"
            )
        except OSError:
            pass  # no NUMA directory (every pool read reports it): the ledgers still need a lock
        lock_path = os.path.join(self.ledger_dir, ".lock")
        try:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(self.ledger_dir, mode=0o755, exist_ok=True)
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot open hugepage ledger lock {lock_path}: {exc.strerror}") from None
        return fd, f"hugepage ledger lock {lock_path}"

    def _settle(self) -> dict[str, Ledger]:
        boot_id = self._boot_id()
        ledgers, stale = self._all_ledgers()
        for name in stale:  # a crash between a ledger's rename and the unlink of its previous state
            self._unlink(os.path.join(self.ledger_dir, name))
        held = {}
        for ledger in ledgers:
            if ledger.boot_id and boot_id and ledger.boot_id != boot_id:
                log.warning("hugepages: dropping ledger of job %s from an earlier boot", ledger.job_id)
                self._delete_ledger(ledger)
            elif ledger.sysfs and ledger.sysfs != self.sysfs_root:
                raise StateError(
                    f"hugepage ledger of job {ledger.job_id} in {self.ledger_dir} is about the pools under"
                    f" {ledger.sysfs}, not {self.sysfs_root}: a ledger directory belongs to one kernel"
                    " (give each simulated node its own runtime_dir)"
                )
            elif ledger.state == "growing":
                log.warning("hugepages: undoing the interrupted reservation of job %s", ledger.job_id)
                self._undo_growth(ledger)
            elif ledger.state == "releasing":
                log.warning("hugepages: finishing the interrupted release of job %s", ledger.job_id)
                self._finish_release(ledger)
            else:
                held[ledger.job_id] = ledger
        return held

    def _read_file(self, job_id: str, state: str) -> Optional[Ledger]:
        """The ledger in ``<job_id>.<state>.json``, None if there is no such file."""
        path = f"{self.ledger_dir}/{job_id}.{state}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read hugepage ledger {path}: {exc.strerror}") from None
        try:
            chunks = [os.read(fd, 65536)]  # a ledger is a few hundred bytes: one read, ...
            while len(chunks[-1]) == 65536:  # ... as a short read of a regular file is its end
                chunks.append(os.read(fd, 65536))
        except OSError as exc:
            raise StateError(f"cannot read hugepage ledger {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        head, _, tail = b"".join(chunks).decode("utf-8", "replace").partition("\n")
        try:
            ledger = Ledger.from_json(head)
        except (ValueError, KeyError, TypeError) as exc:
            if state == "growing":
                # One write(2) before any pool write: the writer died before changing a pool, or
                # (seen without the lock) is about to write it.
                if self._locked:
                    log.warning("hugepages: removing the unfinished intent %s (no pool was changed)", path)
                    self._unlink(path)
                return None
            if self._predates_boot(path):
                log.warning("hugepages: removing unreadable ledger %s from an earlier boot", path)
                self._unlink(path)
                return None
            raise StateError(
                f"hugepage ledger {path} is corrupt ({exc}); check the pools under"
                f" {self._node_root} and remove the file"
            ) from None
        if state == "held" and ledger.state == "growing":  # renamed, not rewritten: see reserve
            ledger.state = "held"
            for entry in ledger.nodes.values():
                entry.added = entry.target - entry.before
        if ledger.job_id != job_id or ledger.state != state:
            raise StateError(
                f"hugepage ledger {path} is of job {ledger.job_id} in state {ledger.state}, not {job_id}"
                f" in state {state}"
            )
        ledger.file_state = state
        if tail and state == "held":
            release = parse_release_line(tail)
            if release is not None:
                try:
                    ledger.apply_release(release)
                except ValueError as exc:
                    raise StateError(
                        f"hugepage ledger {path} is corrupt ({exc}); check the pools under"
                        f" {self._node_root} and remove the file"
                    ) from None
        return ledger

    def _read_job(self, job_id: str) -> Optional[Ledger]:
        """The most advanced ledger of ``job_id``.  Without the lock too: a writer creates the next
        state's file before it unlinks the previous one, so probing the states in their order
        finds the ledger at least as of when the probe began."""
        found = None
        for state in STATES:
            ledger = self._read_file(job_id, state)
            if ledger is not None:
                found = ledger
        return found

    def _all_ledgers(self) -> tuple[list[Ledger], list[str]]:
        """Every job's most advanced ledger, sorted by job id, and the file names it supersedes."""
        try:
            names = os.listdir(self.ledger_dir)
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise StateError(f"cannot list hugepage ledgers in {self.ledger_dir}: {exc.strerror}") from None
        latest: dict[str, str] = {}
        stale = []
        for name in names:
            parsed = parse_ledger_name(name)
            if parsed is None:
                continue  # the lock, temporary files, anything else
            job_id, state = parsed
            if job_id in latest and _RANK[latest[job_id]] > _RANK[state]:
                stale.append(name)
                continue
            if job_id in latest:
                stale.append(ledger_name(job_id, latest[job_id]))
            latest[job_id] = state
        ledgers = []
        for job_id in sorted(latest):
            ledger = self._read_file(job_id, latest[job_id])
            if ledger is None:  # moved on since the listing (a reader without the lock)
                ledger = self._read_job(job_id)
            if ledger is not None:
                ledgers.append(ledger)
        return ledgers, stale

    def _write_intent(self, ledger: Ledger) -> None:
        """Create ``<job>.growing.json`` by one write(2) (see the module docstring)."""
        path = f"{self.ledger_dir}/{ledger_name(ledger.job_id, 'growing')}"
        data = ledger.to_json().encode()
        try:
            fd = self._create_file(path, os.O_EXCL)
        except OSError as exc:
            raise StateError(f"cannot create hugepage ledger {path}: {exc.strerror}") from None
        try:
            try:
                _write_all_at_once(fd, data, self.fsync)
            finally:
                os.close(fd)
        except OSError as exc:
            self._unlink(path)  # no pool has changed
            raise StateError(f"cannot write hugepage ledger {path}: {exc.strerror}") from None
        self._sync_dir()
        ledger.file_state = "growing"

    def _create_file(self, path: str, mode_flag: int) -> int:
        """Open ``path`` in the ledger directory for writing, created with ``mode_flag`` (``O_EXCL``
        or ``O_TRUNC``); the directory is made on first use."""
        flags = os.O_WRONLY | os.O_CREAT | mode_flag | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(self.ledger_dir, mode=0o755, exist_ok=True)
            return os.open(path, flags, 0o644)

    def _append_release(self, ledger: Ledger) -> None:
        """Append the release line to the held file by one write(2); the ledger is then releasing."""
        path = f"{self.ledger_dir}/{ledger_name(ledger.job_id, ledger.file_state)}"
        data = b"\n" + ledger.release_json().encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                _write_all_at_once(fd, data, self.fsync)
            finally:
                os.close(fd)
        except OSError as exc:  # a torn line reads as no release: the job still holds its pages
            raise StateError(f"cannot append to hugepage ledger {path}: {exc.strerror}") from None
        ledger.state = "releasing"

    def _write_ledger(self, ledger: Ledger, state: str) -> None:
        """Write ``ledger`` moved to ``state`` as a new file (tmp + rename), then drop its previous one."""
        previous, ledger.state = ledger.file_state, state
        path = f"{self.ledger_dir}/{ledger_name(ledger.job_id, ledger.state)}"
        tmp = f"{self.ledger_dir}/.{ledger.job_id}.json.{os.getpid()}.tmp"
        try:
            fd = self._create_file(tmp, os.O_TRUNC)
            try:
                _write_all_at_once(fd, ledger.to_json().encode(), self.fsync)
            finally:
                os.close(fd)
            os.rename(tmp, path)  # never over an existing file: see the module docstring
            self._sync_dir()
        except OSError as exc:
            raise StateError(f"cannot write hugepage ledger {path}: {exc.strerror}") from None
        ledger.file_state = state
        if previous:
            self._unlink(f"{self.ledger_dir}/{ledger_name(ledger.job_id, previous)}")

    def _rename_ledger(self, ledger: Ledger, state: str) -> None:
        """Move ``ledger`` to ``state`` by renaming its file, content unchanged (one syscall)."""
        path = f"{self.ledger_dir}/{ledger_name(ledger.job_id, ledger.file_state)}"
        try:
            os.rename(path, f"{self.ledger_dir}/{ledger_name(ledger.job_id, state)}")
        except OSError as exc:
            raise StateError(f"cannot rename hugepage ledger {path}: {exc.strerror}") from None
        self._sync_dir()
        ledger.state = ledger.file_state = state

    def _delete_ledger(self, ledger: Ledger) -> None:
        self._unlink(f"{self.ledger_dir}/{ledger_name(ledger.job_id, ledger.file_state)}")

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(f"cannot remove hugepage ledger {path}: {exc.strerror}") from None
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync:
            fd = os.open(self.ledger_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _boot_id(self) -> str:
        if self._boot_id_cache is None:  # a process never outlives a boot
            try:
                fd = os.open(f"{self.proc_root}/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self._boot_id_cache = os.read(fd, 64).decode("ascii", "replace").strip()
                finally:
                    os.close(fd)
            except OSError:
                self._boot_id_cache = ""  # unknown: ledgers are then never treated as stale
        return self._boot_id_cache

    def _predates_boot(self, path: str) -> bool:
        try:
            with open(os.path.join(self.proc_root, "stat"), encoding="ascii") as handle:
                btime = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
            return os.stat(path).st_mtime < btime
        except (OSError, StopIteration, ValueError, IndexError):
            return False

    # ----------------------------------------------------------------- helpers

    def _reservation(self, ledger: Ledger) -> Reservation:
        return Reservation(
            job_id=ledger.job_id,
            page_size=ledger.page_size,
            pages={node: entry.asked for node, entry in ledger.nodes.items()},
            added={node: entry.added or 0 for node, entry in ledger.nodes.items()},
            pool=self,
        )

    @staticmethod
    def _describe(ledger: Ledger) -> str:
        pages = ", ".join(f"node {node}: {entry.asked}" for node, entry in sorted(ledger.nodes.items()))
        return f"{page_size_label(ledger.page_size)} hugepages ({pages or 'none'})"


def _write_all_at_once(fd: int, data: bytes, fsync: bool) -> None:
    """One write(2) of ``data`` (a short write is an error), then fsync if asked."""
    if os.write(fd, data) != len(data):
        raise OSError(errno.ENOSPC, "short write")
    if fsync:
        os.fsync(fd)


def _job_id(job_id: object) -> str:
    """Slurm job ids are numbers; ledgers are named by their text."""
    if isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if isinstance(job_id, str) and job_id.isdigit() and job_id.isascii() and len(job_id) <= 128:
        return job_id  # the usual case, without the regex
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise StateError(
            f"invalid job id {job_id!r} for a hugepage ledger: use letters, digits, '.', '_', '+', '-'"
        )
    return job_id
