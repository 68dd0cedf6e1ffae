"""Unit tests of the hugepage pool manager against a fake sysfs tree and a small fake kernel."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import re
from pathlib import Path

import pytest

from slurm_vc.config import config_from_mapping
from slurm_vc.errors import HugepageError, StateError
from slurm_vc.hugepages import (
    HugepagePool,
    NodeEntry,
    SysfsIO,
    growth_to_undo,
    ledger_dir_of,
    ledger_paths,
    parse_ledger_name,
    pool_dir,
    release_target,
)
from slurm_vc.units import GIB, MIB

M2 = 2 * MIB
G1 = GIB
BOOT_ID = "1d3c7a6e-0000-4000-8000-000000000001"
BTIME = 1_700_000_000


class Crash(BaseException):
    """Simulates the process dying at a chosen point (not an Exception: no handler may catch it)."""


def make_tree(root: Path, nodes=(0, 1), sizes=(M2, G1), per_node_compact=True) -> tuple[str, str]:
    """A fake /sys and /proc: node dirs with hugepage pools, compact files, boot id and btime."""
    sysfs = root / "sys"
    for node in nodes:
        node_dir = sysfs / "devices/system/node" / f"node{node}"
        for size in sizes:
            directory = Path(pool_dir(str(sysfs), node, size))
            directory.mkdir(parents=True)
            for name in ("nr_hugepages", "free_hugepages", "surplus_hugepages"):
                (directory / name).write_text("0\n")
        if per_node_compact:
            (node_dir / "compact").write_text("")
    proc = root / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    (proc / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    (proc / "sys/vm").mkdir(parents=True)
    (proc / "sys/vm/compact_memory").write_text("")
    (proc / "stat").write_text(f"cpu  1 2 3\nbtime {BTIME}\nprocesses 9\n")
    return str(sysfs), str(proc)


class FakeKernel(SysfsIO):
    """Kernel semantics of nr/free/surplus_hugepages for each (node, page size), in memory.

    ``cap[node]`` bounds the pages a node can hold (fragmentation); a compaction write raises it by
    ``compact_gain[node]``.  ``hook(event, path, value)`` lets a test crash before or after a write.
    ``read_int`` and ``write_int`` (by path) are the kernel; the manager's open files reach it through
    ``pread_int`` and ``pwrite_int``, by the path each descriptor was opened with.  ``open`` opens the
    tree's placeholder file, so a pool the tree lacks is a FileNotFoundError as on a real kernel.
    """

    _POOL = re.compile(r"/node(\d+)/hugepages/hugepages-(\d+)kB/(nr|free|surplus)_hugepages$")

    def __init__(self, cap=None, compact_gain=None):
        self.pools: dict[tuple[int, int], dict[str, int]] = {}
        self.cap = dict(cap or {})
        self.compact_gain = dict(compact_gain or {})
        self.compactions: list[str] = []
        self.pool_writes: list[tuple[int, int, int]] = []
        self.reads: list[str] = []  # "nr", "free" or "surplus", in order
        self.opens: list[str] = []  # every path opened through open(), in order
        self.files: dict[int, str] = {}  # open descriptor -> its path
        self.hook = None

    def open(self, path: str, writable: bool = False) -> int:
        fd = super().open(path, writable)
        self.opens.append(path)
        self.files[fd] = path
        return fd

    def close(self, fd: int) -> None:
        del self.files[fd]
        super().close(fd)

    def pread_int(self, fd: int) -> int:
        return self.read_int(self.files[fd])

    def pwrite_int(self, fd: int, value: int) -> None:
        self.write_int(self.files[fd], value)

    def pool(self, node: int, size: int) -> dict[str, int]:
        return self.pools.setdefault((node, size // 1024), {"persistent": 0, "surplus": 0, "used": 0})

    def set_persistent(self, node: int, size: int, pages: int) -> None:
        self.pool(node, size)["persistent"] = pages

    def use(self, node: int, size: int, pages: int) -> None:
        """A guest faults in pages."""
        pool = self.pool(node, size)
        assert pool["persistent"] + pool["surplus"] - pool["used"] >= pages
        pool["used"] += pages

    def let_go(self, node: int, size: int, pages: int) -> None:
        """A guest exits: surplus pages are freed first, the rest return to the free list."""
        pool = self.pool(node, size)
        pool["used"] -= pages
        freed = min(pool["surplus"], pages)
        pool["surplus"] -= freed

    def read_int(self, path: str) -> int:
        match = self._POOL.search(path)
        if not match:
            return super().read_int(path)
        if not os.path.isdir(os.path.dirname(path)):  # the kernel has no such pool: no such file
            raise FileNotFoundError(2, "No such file or directory", path)
        self.reads.append(match[3])
        pool = self.pools.setdefault(
            (int(match[1]), int(match[2])), {"persistent": 0, "surplus": 0, "used": 0}
        )
        total = pool["persistent"] + pool["surplus"]
        return {"nr": total, "free": total - pool["used"], "surplus": pool["surplus"]}[match[3]]

    def write_int(self, path: str, value: int) -> None:
        if self.hook:
            self.hook("before", path, value)
        match = self._POOL.search(path)
        if match and match[3] == "nr":
            self._set_nr(int(match[1]), int(match[2]), value)
            self.pool_writes.append((int(match[1]), int(match[2]), value))
        elif path.endswith("compact") or path.endswith("compact_memory"):
            self.compactions.append(path)
            node_match = re.search(r"/node(\d+)/compact$", path)
            for node in [int(node_match[1])] if node_match else list(self.compact_gain):
                if node in self.cap:
                    self.cap[node] += self.compact_gain.get(node, 0)
        else:
            super().write_int(path, value)
        if self.hook:
            self.hook("after", path, value)

    def _set_nr(self, node: int, kb: int, count: int) -> None:
        # Mirrors mm/hugetlb.c set_max_huge_pages() on a single node.
        pool = self.pools.setdefault((node, kb), {"persistent": 0, "surplus": 0, "used": 0})
        while pool["surplus"] and count > pool["persistent"]:
            pool["surplus"] -= 1
            pool["persistent"] += 1
        limit = self.cap.get(node, 1 << 30)
        while count > pool["persistent"] and pool["persistent"] + pool["surplus"] < limit:
            pool["persistent"] += 1
        free = pool["persistent"] + pool["surplus"] - pool["used"]
        while count < pool["persistent"] and free > 0:
            pool["persistent"] -= 1
            free -= 1
        if count < pool["persistent"]:
            pool["surplus"] += pool["persistent"] - count
            pool["persistent"] = count


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path)


@pytest.fixture
def kernel():
    return FakeKernel()


def make_pool(tmp_path, tree, kernel, **kwargs) -> HugepagePool:
    sysfs, proc = tree
    kwargs.setdefault("fsync", False)
    return HugepagePool(str(tmp_path / "state"), sysfs, proc_root=proc, io=kernel, **kwargs)


def nr(kernel: FakeKernel, node: int, size: int = M2) -> int:
    pool = kernel.pool(node, size)
    return pool["persistent"] + pool["surplus"]


def persistent(kernel: FakeKernel, node: int, size: int = M2) -> int:
    return kernel.pool(node, size)["persistent"]


def ledger_file(tmp_path, job: str, state: str) -> Path:
    return tmp_path / "state" / "hugepages" / f"{job}.{state}.json"


def ledger_files(tmp_path, job: str) -> dict[str, dict]:
    """State in the file name -> the ledger record (first line) of every ledger file of ``job``; a
    held file's appended release lines are under ``"release_lines"``."""
    found = {}
    for state in ("growing", "held", "releasing"):
        path = ledger_file(tmp_path, job, state)
        if path.exists():
            first, *more = path.read_text().split("\n")
            found[state] = json.loads(first)
            if more:
                found[state]["release_lines"] = more
    return found


# ------------------------------------------------------------------ pure decisions


def test_release_target_subtracts_exactly_and_respects_others():
    assert release_target(persistent_now=80, added=50, held_by_others=30) == 30
    assert release_target(persistent_now=60, added=50, held_by_others=30) == 30  # shrunk from outside
    assert release_target(persistent_now=20, added=50, held_by_others=30) == 20  # never grows
    assert release_target(persistent_now=130, added=50, held_by_others=0) == 80  # admin's 80 stay


def test_growth_to_undo_is_bounded_by_intent_and_observation():
    entry = NodeEntry(before=10, surplus_before=2, asked=40, target=52)
    assert growth_to_undo(10, entry) == 0  # died before the write
    assert growth_to_undo(52, entry) == 42  # died after it: asked + adopted surplus
    assert growth_to_undo(30, entry) == 20  # partial allocation
    assert growth_to_undo(90, entry) == 42  # someone else grew too: never more than intended
    assert growth_to_undo(5, entry) == 0  # shrunk from outside: nothing to take


# ------------------------------------------------------------------ reserve and release


def test_reserve_grows_each_node_by_exactly_the_plan(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 10)  # the admin's static pages
    pool = make_pool(tmp_path, tree, kernel)
    res = pool.reserve("1001", M2, {0: 64, 1: 32})
    assert (nr(kernel, 0), nr(kernel, 1)) == (74, 32)
    assert res.pages == {0: 64, 1: 32} and res.added == {0: 64, 1: 32}
    ledger = pool.ledger("1001")
    assert ledger.state == "held" and ledger.page_size == M2 and ledger.boot_id == BOOT_ID
    assert ledger.nodes[0].before == 10 and ledger.nodes[0].added == 64
    assert [ledger.job_id for ledger in pool.list_ledgers()] == ["1001"]
    assert nr(kernel, 0, G1) == 0  # the other page size is untouched


def test_ledger_is_written_before_the_pool_changes(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    seen = []

    def hook(event, path, value):
        if event == "before" and path.endswith("nr_hugepages"):
            [(state, data)] = ledger_files(tmp_path, "7").items()
            seen.append((state, data["state"], data["nodes"]["0"]["target"], data["nodes"]["0"]["asked"]))

    kernel.hook = hook
    pool.reserve("7", M2, {0: 5})
    assert seen == [("growing", "growing", 5, 5)]


def test_release_subtracts_exactly_what_the_job_added_and_second_release_is_noop(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 10)
    pool = make_pool(tmp_path, tree, kernel)
    res = pool.reserve("1001", M2, {0: 64, 1: 32})
    res.release()
    assert (nr(kernel, 0), nr(kernel, 1)) == (10, 0)
    assert pool.ledger("1001") is None and ledger_files(tmp_path, "1001") == {}
    writes = len(kernel.pool_writes)
    pool.release("1001")
    res.release()
    pool.release("never-reserved")
    assert len(kernel.pool_writes) == writes and nr(kernel, 0) == 10


def test_concurrent_jobs_grow_and_shrink_independently(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 3)
    first = make_pool(tmp_path, tree, kernel)
    second = make_pool(tmp_path, tree, kernel)  # another prolog on the same node
    first.reserve("a", M2, {0: 100})
    second.reserve("b", M2, {0: 50, 1: 8})
    assert nr(kernel, 0) == 153
    first.release("a")
    assert (nr(kernel, 0), nr(kernel, 1)) == (53, 8)
    first.reserve("c", M2, {1: 4})
    second.release("b")
    assert (nr(kernel, 0), nr(kernel, 1)) == (3, 4)
    first.release("c")
    assert (nr(kernel, 0), nr(kernel, 1)) == (3, 0)


def test_reserve_is_idempotent_for_the_same_request_only(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    first = pool.reserve("5", M2, {0: 8, 1: 0})
    writes = len(kernel.pool_writes)
    again = pool.reserve("5", M2, {0: 8})  # a re-run prolog
    assert again == first and len(kernel.pool_writes) == writes and nr(kernel, 0) == 8
    with pytest.raises(StateError, match="job 5 already holds 2M hugepages"):
        pool.reserve("5", M2, {0: 9})
    with pytest.raises(StateError):
        pool.reserve("5", G1, {0: 8})


def test_one_gigabyte_pages(tmp_path, tree, kernel):
    kernel.set_persistent(0, G1, 1)
    pool = make_pool(tmp_path, tree, kernel)
    res = pool.reserve("big", G1, {0: 2, 1: 1})
    assert (nr(kernel, 0, G1), nr(kernel, 1, G1)) == (3, 1)
    assert nr(kernel, 0, M2) == 0
    assert (0, 1048576) in kernel.pools
    res.release()
    assert (nr(kernel, 0, G1), nr(kernel, 1, G1)) == (1, 0)


def test_counts_read_the_pool(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("1", M2, {0: 6})
    kernel.use(0, M2, 4)
    counts = pool.counts(0, M2)
    assert (counts.nr, counts.free, counts.surplus, counts.persistent) == (6, 2, 0, 6)


# ------------------------------------------------------------------ fragmentation


def test_shortfall_is_compacted_away_within_the_retry_bound(tmp_path, tree):
    kernel = FakeKernel(cap={0: 40}, compact_gain={0: 15})
    pool = make_pool(tmp_path, tree, kernel, compact_retries=3)
    res = pool.reserve("9", M2, {0: 64})
    assert nr(kernel, 0) == 64 and res.added == {0: 64}
    assert len(kernel.compactions) == 2  # 40 -> 55 -> 70
    assert all(path.endswith("node0/compact") for path in kernel.compactions)


def test_shortfall_rolls_back_every_touched_node(tmp_path, tree):
    kernel = FakeKernel(cap={1: 10}, compact_gain={1: 2})
    kernel.set_persistent(0, M2, 7)
    kernel.set_persistent(1, M2, 4)
    pool = make_pool(tmp_path, tree, kernel, compact_retries=2)
    pool.reserve("other", M2, {0: 5})  # another job's pages must survive the rollback
    with pytest.raises(HugepageError) as info:
        pool.reserve("9", M2, {0: 64, 1: 32})
    message = str(info.value)
    assert "NUMA node 1" in message and "wanted 32" in message and "gave 10" in message
    assert "after 2 compaction retries" in message
    assert len(kernel.compactions) == 2
    assert (nr(kernel, 0), nr(kernel, 1)) == (12, 4)  # node 0 had grown to 76 first
    assert pool.ledger("9") is None
    assert [ledger.job_id for ledger in pool.list_ledgers()] == ["other"]


def test_no_compaction_when_retries_are_zero(tmp_path, tree):
    kernel = FakeKernel(cap={0: 3}, compact_gain={0: 100})
    pool = make_pool(tmp_path, tree, kernel, compact_retries=0)
    with pytest.raises(HugepageError, match="wanted 4 more 2M hugepages, the kernel gave 3 after 0"):
        pool.reserve("9", M2, {0: 4})
    assert kernel.compactions == [] and nr(kernel, 0) == 0


def test_compaction_falls_back_to_proc_when_no_per_node_file(tmp_path):
    tree = make_tree(tmp_path, nodes=(0,), per_node_compact=False)
    kernel = FakeKernel(cap={0: 1}, compact_gain={0: 10})
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("9", M2, {0: 4})
    assert kernel.compactions == [os.path.join(tree[1], "sys/vm/compact_memory")]


def test_write_error_rolls_back_and_names_the_file(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)

    def hook(event, path, value):
        if event == "before" and "node1/" in path and value > 0:
            raise OSError(13, "Permission denied")

    kernel.hook = hook
    with pytest.raises(HugepageError, match=r"cannot write 2 to .*node1/.*nr_hugepages: Permission denied"):
        pool.reserve("9", M2, {0: 1, 1: 2})
    assert (nr(kernel, 0), nr(kernel, 1)) == (0, 0) and pool.ledger("9") is None


# ------------------------------------------------------------------ surplus pages of a running guest


def test_shrinking_under_a_running_guest_leaves_surplus_and_the_next_job_adopts_it(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 2)
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    kernel.use(0, M2, 50)  # a's guest
    pool.release("a")  # the guest is still being torn down
    # The kernel frees the 2 free pages and keeps the 50 in use, 48 of them as surplus.
    assert kernel.pool(0, M2) == {"persistent": 2, "surplus": 48, "used": 50}
    res = pool.reserve("b", M2, {0: 10})
    assert pool.counts(0, M2).free == 10  # b's pages are free at once
    assert res.added == {0: 58} and pool.ledger("b").nodes[0].surplus_before == 48
    kernel.let_go(0, M2, 50)  # a's guest is gone: its pages stayed in the pool as persistent
    pool.release("b")
    assert kernel.pool(0, M2) == {"persistent": 2, "surplus": 0, "used": 0}


def test_release_never_takes_pages_other_ledgers_hold(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    pool.reserve("b", M2, {0: 30})
    pool.io.write_int(os.path.join(pool_dir(tree[0], 0, M2), "nr_hugepages"), 60)  # an outsider
    pool.release("a")
    assert nr(kernel, 0) == 30
    pool.release("b")
    assert nr(kernel, 0) == 0


# ------------------------------------------------------------------ crashes


def crash_at(kernel: FakeKernel, event: str, when=lambda value: True):
    def hook(hook_event, path, value):
        if hook_event == event and path.endswith("nr_hugepages") and when(value):
            kernel.hook = None
            raise Crash()

    kernel.hook = hook


def test_crash_between_ledger_write_and_pool_write(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 10)
    crash_at(kernel, "before")
    with pytest.raises(Crash):
        make_pool(tmp_path, tree, kernel).reserve("1", M2, {0: 64})
    assert ledger_files(tmp_path, "1")["growing"]["state"] == "growing"
    assert nr(kernel, 0) == 10
    restarted = make_pool(tmp_path, tree, kernel)  # the epilog, in a new process
    restarted.release("1")
    assert nr(kernel, 0) == 10 and restarted.ledger("1") is None
    restarted.release("1")
    assert nr(kernel, 0) == 10


def test_crash_after_pool_write_before_ledger_update(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 10)
    crash_at(kernel, "after")
    with pytest.raises(Crash):
        make_pool(tmp_path, tree, kernel).reserve("1", M2, {0: 64})
    assert nr(kernel, 0) == 74
    make_pool(tmp_path, tree, kernel).release("1")
    assert nr(kernel, 0) == 10


def test_interrupted_reservation_is_settled_before_another_job_changes_the_pool(tmp_path, tree, kernel):
    crash_at(kernel, "after")
    with pytest.raises(Crash):
        make_pool(tmp_path, tree, kernel).reserve("dead", M2, {0: 64})
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("live", M2, {0: 20})
    assert nr(kernel, 0) == 20 and pool.ledger("dead") is None
    pool.release("dead")  # the epilog of the dead job: nothing left to do
    assert nr(kernel, 0) == 20
    pool.release("live")
    assert nr(kernel, 0) == 0


def test_crash_after_shrink_before_ledger_delete_does_not_subtract_twice(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    pool.reserve("b", M2, {0: 30})
    crash_at(kernel, "after")
    with pytest.raises(Crash):
        pool.release("a")
    files = ledger_files(tmp_path, "a")
    assert list(files) == ["held"] and files["held"]["release_lines"] == ['{"release":{"0":[80,30]}}']
    assert nr(kernel, 0) == 30
    restarted = make_pool(tmp_path, tree, kernel)
    restarted.release("a")
    assert nr(kernel, 0) == 30 and restarted.ledger("a") is None
    restarted.release("b")
    assert nr(kernel, 0) == 0


def test_crash_before_shrink_is_finished_by_the_next_locker(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    pool.reserve("b", M2, {0: 30})
    crash_at(kernel, "before")
    with pytest.raises(Crash):
        pool.release("a")
    assert nr(kernel, 0) == 80
    make_pool(tmp_path, tree, kernel).list_ledgers()  # reading does not settle ...
    assert nr(kernel, 0) == 80
    make_pool(tmp_path, tree, kernel).release("b")  # ... the next locked operation does
    assert nr(kernel, 0) == 0 and make_pool(tmp_path, tree, kernel).list_ledgers() == []


def test_ledger_from_an_earlier_boot_is_dropped_without_touching_the_pool(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("old", M2, {0: 40})
    kernel.set_persistent(0, M2, 0)  # the reboot reset the pool
    Path(tree[1], "sys/kernel/random/boot_id").write_text("another-boot\n")
    after_reboot = make_pool(tmp_path, tree, kernel)
    after_reboot.release("old")
    assert nr(kernel, 0) == 0 and after_reboot.ledger("old") is None


def test_corrupt_ledger(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("ok", M2, {0: 1})
    torn = ledger_file(tmp_path, "torn", "held")
    torn.write_text('{"vers')
    with pytest.raises(StateError, match="torn.held.json is corrupt"):
        pool.list_ledgers()
    with pytest.raises(StateError, match="corrupt"):
        pool.release("ok")
    os.utime(torn, (BTIME - 60, BTIME - 60))  # torn by a power cut before this boot
    assert [ledger.job_id for ledger in pool.list_ledgers()] == ["ok"] and not torn.exists()


# ------------------------------------------------------------------ input checks and the lock


def test_bad_inputs_are_clear_errors(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    with pytest.raises(HugepageError, match="not supported: use 2M"):
        pool.reserve("1", 4096, {0: 1})
    with pytest.raises(HugepageError, match="NUMA node 5 does not exist"):
        pool.reserve("1", M2, {0: 1, 5: 1})
    with pytest.raises(HugepageError, match="invalid hugepage plan"):
        pool.reserve("1", M2, {0: -1})
    with pytest.raises(StateError, match="invalid job id"):
        pool.reserve("../etc/passwd", M2, {0: 1})
    with pytest.raises(StateError, match="invalid job id"):
        pool.release(".lock")
    with pytest.raises(StateError, match="invalid job id"):
        pool.reserve("42\n", M2, {0: 1})  # no newline in a ledger's name
    assert nr(kernel, 0) == 0 and pool.list_ledgers() == []


def test_missing_page_size_is_named(tmp_path, kernel):
    tree = make_tree(tmp_path, nodes=(0,), sizes=(M2,))
    pool = make_pool(tmp_path, tree, kernel)
    with pytest.raises(HugepageError, match="no 1G hugepages on NUMA node 0"):
        pool.reserve("1", G1, {0: 1})
    assert pool.ledger("1") is None


def test_lock_wait_is_bounded(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel, lock_timeout=0.2)
    node_root = os.open(os.path.join(tree[0], "devices/system/node"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(node_root, fcntl.LOCK_EX)
        with pytest.raises(StateError, match=r"held by another process for more than 0.2 s"):
            pool.reserve("1", M2, {0: 1})
        with pytest.raises(StateError):
            pool.release("1")
    finally:
        os.close(node_root)
    assert nr(kernel, 0) == 0


def test_one_lock_per_operation_and_no_lock_file_when_sysfs_has_the_node_dir(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("1", M2, {0: 2})
    pool.release("1")
    assert os.listdir(tmp_path / "state" / "hugepages") == []  # no .lock: the sysfs dir is the lock


def test_ledger_dir_lock_when_sysfs_has_no_node_dir(tmp_path, kernel):
    sysfs, proc = make_tree(tmp_path, nodes=())
    pool = make_pool(tmp_path, (sysfs, proc), kernel, lock_timeout=0.1)
    assert pool.list_ledgers() == []
    pool.release("1")  # nothing to release, but it took the fallback lock
    lock = tmp_path / "state" / "hugepages" / ".lock"
    assert lock.exists()
    with open(lock, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(StateError, match=r"hugepage ledger lock .*/\.lock is held"):
            pool.release("1")
    with pytest.raises(HugepageError, match="NUMA node 0 does not exist"):
        pool.reserve("1", M2, {0: 1})


def test_from_config_uses_the_site_timeouts_and_the_runtime_dir(tmp_path):
    config = config_from_mapping(
        {
            "state_dir": str(tmp_path / "state"),
            "runtime_dir": str(tmp_path / "run"),
            "timeouts": {"lock": 7, "hugepage_compact_retries": 5},
        }
    )
    pool = HugepagePool.from_config(config, sysfs_root="/nonexistent")
    assert (pool.state_dir, pool.lock_timeout, pool.compact_retries) == (str(tmp_path / "state"), 7, 5)
    assert pool.ledger_dir == str(tmp_path / "run" / "hugepages") == ledger_dir_of(config)
    assert HugepagePool.from_config(config, ledger_dir="/elsewhere").ledger_dir == "/elsewhere"


def test_ledgers_live_under_the_runtime_dir_by_default():
    config = config_from_mapping({})
    assert config.runtime_dir == "/run/slurm-vc"
    assert HugepagePool.from_config(config).ledger_dir == "/run/slurm-vc/hugepages"
    assert HugepagePool("/var/lib/x").ledger_dir == "/var/lib/x/hugepages"  # a bare pool: its state dir


def test_fsync_path_writes_the_same_ledgers(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel, fsync=True)
    pool.reserve("1", M2, {0: 3})
    assert pool.ledger("1").nodes[0].added == 3
    pool.release("1")
    assert nr(kernel, 0) == 0 and os.listdir(tmp_path / "state" / "hugepages") == []


# ------------------------------------------------------------------ real processes, plain files


def _worker(state_dir: str, sysfs: str, proc: str, prefix: str, rounds: int, queue) -> None:
    pool = HugepagePool(state_dir, sysfs, proc_root=proc, fsync=False)
    try:
        for index in range(rounds):
            job = f"{prefix}{index}"
            pages = {0: 3 + index % 5, 1: 1 + index % 2}
            pool.reserve(job, M2, pages)
            ledger = pool.ledger(job)
            assert ledger.state == "held" and {n: e.added for n, e in ledger.nodes.items()} == pages
            pool.release(job)
        queue.put("ok")
    except BaseException as exc:  # report to the parent instead of dying silently
        queue.put(repr(exc))


@pytest.mark.parametrize("shared_state_dir", [True, False], ids=["one-state-dir", "two-state-dirs"])
def test_two_processes_reserving_and_releasing_keep_the_pool_consistent(tmp_path, tree, shared_state_dir):
    """Without the locks, read-modify-writes of nr_hugepages would lose updates.  With two state dirs
    (two simulated nodes on one machine) only the flock on the sysfs node directory serialises them."""
    sysfs, proc = tree
    nr_path = Path(pool_dir(sysfs, 0, M2), "nr_hugepages")
    nr_path.write_text("11\n")  # the admin's pages; the plain file has no kernel behind it
    state_dirs = {
        prefix: str(tmp_path / ("state" if shared_state_dir else f"state-{prefix}")) for prefix in "xy"
    }
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_worker, args=(state_dirs[prefix], sysfs, proc, prefix, 40, queue))
        for prefix in "xy"
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert results == ["ok", "ok"]
    # A lost update (read-modify-write without the lock) would leave a different count here.
    assert nr_path.read_text().strip() == "11"
    assert Path(pool_dir(sysfs, 1, M2), "nr_hugepages").read_text().strip() == "0"
    for state_dir in state_dirs.values():
        assert HugepagePool(state_dir, sysfs, proc_root=proc).list_ledgers() == []


def test_managers_of_one_kernel_can_share_a_ledger_dir(tmp_path, tree, kernel):
    shared = str(tmp_path / "shared-ledgers")
    node_a = make_pool(tmp_path / "a", tree, kernel, ledger_dir=shared)
    node_b = make_pool(tmp_path / "b", tree, kernel, ledger_dir=shared)
    node_a.reserve("1", M2, {0: 10})
    node_b.reserve("2", M2, {0: 5})
    assert sorted(ledger.job_id for ledger in node_b.list_ledgers()) == ["1", "2"]
    assert os.listdir(shared) and not (tmp_path / "a" / "state").exists()
    node_b.release("1")
    node_a.release("2")
    assert nr(kernel, 0) == 0 and node_a.list_ledgers() == []


def test_numeric_job_ids_name_the_same_ledger(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    res = pool.reserve(4242, M2, {0: 2})
    assert res.job_id == "4242" and pool.ledger("4242").state == "held"
    pool.release(4242)
    assert nr(kernel, 0) == 0 and pool.ledger(4242) is None


def test_pool_lock_is_shared_by_managers_of_other_state_dirs(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel, lock_timeout=0.1)
    node_root = os.open(os.path.join(tree[0], "devices/system/node"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(node_root, fcntl.LOCK_EX)  # another manager, whatever its state dir, mid-change
        with pytest.raises(StateError, match=r"hugepage pool lock .*/devices/system/node is held"):
            pool.reserve("1", M2, {0: 1})
    finally:
        os.close(node_root)
    pool.reserve("1", M2, {0: 1})
    assert nr(kernel, 0) == 1


# ------------------------------------------------------------------ one file per ledger state


def test_ledger_names_are_pure_and_reversible():
    assert parse_ledger_name("42.held.json") == ("42", "held")
    assert parse_ledger_name("a.b.growing.json") == ("a.b", "growing")
    assert parse_ledger_name("7.releasing.json") == ("7", "releasing")
    for foreign in (".lock", ".7.json.123.tmp", "7.json", "7.done.json", ".held.json", "notes.txt"):
        assert parse_ledger_name(foreign) is None
    assert parse_ledger_name("7\n.held.json") is None  # a job id never ends with a newline
    assert ledger_paths("/run/x", 7) == [
        "/run/x/7.growing.json",
        "/run/x/7.held.json",
        "/run/x/7.releasing.json",
    ]


def test_one_file_per_reservation_and_no_rename_replaces_one(tmp_path, tree, kernel, monkeypatch):
    pool = make_pool(tmp_path, tree, kernel)
    renames, writes = [], []
    real_rename, real_write = os.rename, os.write

    def rename(src, dst):
        renames.append((os.path.exists(dst), os.path.basename(src), os.path.basename(dst)))
        real_rename(src, dst)

    def write(fd, data):
        writes.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_write(fd, data)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "write", write)
    pool.reserve("3", M2, {0: 4})
    assert list(ledger_files(tmp_path, "3")) == ["held"]
    pool.release("3")
    monkeypatch.undo()
    # the intent: one write to its own file; held: a rename; releasing: one write appended to it
    assert renames == [(False, "3.growing.json", "3.held.json")]
    assert [name for name in writes if ".json" in name] == ["3.growing.json", "3.held.json"]
    assert os.listdir(tmp_path / "state" / "hugepages") == []


def outsider_grows_after_the_first_write(kernel: FakeKernel, pages: int) -> None:
    """Another writer adds ``pages`` right after the manager's grow: the job observes more than its target."""

    def hook(event, path, value):
        if event == "after" and path.endswith("nr_hugepages"):
            kernel.hook = None
            kernel.pool(0, M2)["persistent"] += pages

    kernel.hook = hook


def test_an_exact_grow_moves_to_held_by_a_rename_alone(tmp_path, tree, kernel):
    kernel.set_persistent(0, M2, 3)
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("3", M2, {0: 4})
    [(state, data)] = ledger_files(tmp_path, "3").items()
    assert (state, data["state"], data["nodes"]["0"]["added"]) == ("held", "growing", None)  # renamed only
    ledger = make_pool(tmp_path, tree, kernel).ledger("3")
    assert ledger.state == "held" and ledger.nodes[0].added == 4  # target - before
    outsider_grows_after_the_first_write(kernel, 2)
    res = pool.reserve("4", M2, {0: 5})
    assert res.added == {0: 7}  # what it observed: written out in full
    assert ledger_files(tmp_path, "4")["held"]["nodes"]["0"]["added"] == 7
    pool.release("4")
    pool.release("3")
    assert persistent(kernel, 0) == 3


def crash_on_unlink(pool: HugepagePool, suffix: str, monkeypatch) -> None:
    """The process dies right after renaming the next state into place, before the previous goes."""
    real_unlink = pool._unlink

    def unlink(path):
        if path.endswith(suffix):
            monkeypatch.setattr(pool, "_unlink", real_unlink)
            raise Crash()
        real_unlink(path)

    monkeypatch.setattr(pool, "_unlink", unlink)


def test_crash_between_held_rename_and_growing_unlink_keeps_the_reservation(
    tmp_path, tree, kernel, monkeypatch
):
    pool = make_pool(tmp_path, tree, kernel)
    outsider_grows_after_the_first_write(kernel, 1)  # so the held ledger is written out, not renamed
    crash_on_unlink(pool, "9.growing.json", monkeypatch)
    with pytest.raises(Crash):
        pool.reserve("9", M2, {0: 12})
    assert sorted(ledger_files(tmp_path, "9")) == ["growing", "held"] and nr(kernel, 0) == 13
    restarted = make_pool(tmp_path, tree, kernel)
    assert restarted.ledger("9").state == "held"  # the more advanced file is the truth
    assert [ledger.state for ledger in restarted.list_ledgers()] == ["held"]
    assert restarted.reserve("9", M2, {0: 12}).added == {0: 13}  # the re-run prolog: nothing undone
    assert nr(kernel, 0) == 13 and list(ledger_files(tmp_path, "9")) == ["held"]  # the stale one is gone
    restarted.release("9")
    assert nr(kernel, 0) == 0 and ledger_files(tmp_path, "9") == {}


def test_a_releasing_file_of_an_earlier_version_is_finished_once(tmp_path, tree, kernel):
    """Before the appended release line, a release wrote <job>.releasing.json, then unlinked the held
    file: a crash between the two left both (here: before the shrink)."""
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    pool.reserve("b", M2, {0: 30})
    held = json.loads(ledger_file(tmp_path, "a", "held").read_text())
    held["state"] = "releasing"
    held["nodes"]["0"].update(added=50, release_from=80, release_target=30)
    ledger_file(tmp_path, "a", "releasing").write_text(json.dumps(held))
    assert make_pool(tmp_path, tree, kernel).ledger("a").state == "releasing"
    restarted = make_pool(tmp_path, tree, kernel)
    restarted.release("b")  # settles a (finishes its release) first, then releases b
    assert nr(kernel, 0) == 0 and ledger_files(tmp_path, "a") == {}
    restarted.release("a")
    assert nr(kernel, 0) == 0


def test_a_torn_release_line_reads_as_held_and_the_next_release_appends_its_own(tmp_path, tree, kernel):
    """The writer died in the release line's write(2), before any shrink: the job still holds its pages."""
    kernel.set_persistent(0, M2, 10)
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    with open(ledger_file(tmp_path, "a", "held"), "a") as held:
        held.write('\n{"release":{"0":[60,')
    ledger = make_pool(tmp_path, tree, kernel).ledger("a")
    assert ledger.state == "held" and ledger.nodes[0].release_target is None
    make_pool(tmp_path, tree, kernel).release("a")
    assert nr(kernel, 0) == 10 and ledger_files(tmp_path, "a") == {}


def test_crash_after_a_release_line_over_a_torn_one_finishes_from_the_complete_one(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("a", M2, {0: 50})
    pool.reserve("b", M2, {0: 30})
    with open(ledger_file(tmp_path, "a", "held"), "a") as held:
        held.write('\n{"rel')
    crash_at(kernel, "before")
    with pytest.raises(Crash):
        pool.release("a")
    assert len(ledger_files(tmp_path, "a")["held"]["release_lines"]) == 2
    ledger = make_pool(tmp_path, tree, kernel).ledger("a")
    assert ledger.state == "releasing" and (ledger.nodes[0].release_from, ledger.nodes[0].release_target) == (
        80,
        30,
    )
    make_pool(tmp_path, tree, kernel).release("b")
    assert nr(kernel, 0) == 0 and make_pool(tmp_path, tree, kernel).list_ledgers() == []


def test_an_unfinished_intent_is_removed_only_under_the_lock(tmp_path, tree, kernel):
    """An empty or torn growing file: its writer died before its one write(2) ended, so before any
    pool write; a reader without the lock may be looking at a live writer's file and leaves it."""
    kernel.set_persistent(0, M2, 10)
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("live", M2, {0: 5})
    for content in ("", '{"version":1,"job_'):
        intent = ledger_file(tmp_path, "dead", "growing")
        intent.write_text(content)
        assert pool.ledger("dead") is None and [ledger.job_id for ledger in pool.list_ledgers()] == ["live"]
        assert intent.exists()
        pool.release("dead")  # the next locked operation settles it
        assert not intent.exists() and nr(kernel, 0) == 15
    pool.release("live")
    assert nr(kernel, 0) == 10


def test_ledger_json_is_what_json_dumps_would_write(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("7", M2, {0: 3, 1: 2})
    ledger = pool.ledger("7")
    ledger.sysfs = 'odd "path"\n\u00e9'  # escaped, never a raw newline
    ledger.nodes[1].release_from, ledger.nodes[1].release_target = 9, 7
    text = ledger.to_json()
    assert "\n" not in text
    assert json.loads(text) == {
        "version": 1,
        "job_id": "7",
        "page_size": M2,
        "state": "held",
        "boot_id": BOOT_ID,
        "sysfs": 'odd "path"\n\u00e9',
        "nodes": {
            "0": {
                "before": 0,
                "surplus_before": 0,
                "asked": 3,
                "target": 3,
                "added": 3,
                "release_from": None,
                "release_target": None,
            },
            "1": {
                "before": 0,
                "surplus_before": 0,
                "asked": 2,
                "target": 2,
                "added": 2,
                "release_from": 9,
                "release_target": 7,
            },
        },
    }
    pool.release("7")


def test_a_ledger_dir_belongs_to_one_kernel(tmp_path, kernel):
    shared = str(tmp_path / "ledgers")
    one = make_tree(tmp_path / "one")
    two = make_tree(tmp_path / "two")
    make_pool(tmp_path, one, kernel, ledger_dir=shared).reserve("1", M2, {0: 1})
    with pytest.raises(StateError, match=r"about the pools under .*/one/sys, not .*/two/sys"):
        make_pool(tmp_path, two, kernel, ledger_dir=shared).reserve("2", M2, {0: 1})
    make_pool(tmp_path, one, kernel, ledger_dir=shared).release("1")
    assert os.listdir(shared) == []


def test_hot_path_reads_only_what_the_decisions_need(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("1", M2, {0: 8})
    assert kernel.reads == ["nr", "surplus", "nr", "surplus"]  # before the grow, after it
    kernel.reads.clear()
    pool.release("1")
    assert kernel.reads == ["nr", "surplus"]  # the shrink reuses the reading taken under the lock
    assert nr(kernel, 0) == 0


# ------------------------------------------------------------------ pool files, opened once per operation


def pool_file(tree, node: int, name: str, size: int = M2) -> str:
    return os.path.join(pool_dir(tree[0], node, size), name)


def test_each_pool_file_is_opened_once_per_operation_and_closed_after_it(tmp_path, tree, kernel):
    pool = make_pool(tmp_path, tree, kernel)
    pool.reserve("1", M2, {0: 8, 1: 2})  # read, write, read back: on the same two files per pool
    assert kernel.opens == [
        pool_file(tree, 0, "nr_hugepages"),
        pool_file(tree, 0, "surplus_hugepages"),
        pool_file(tree, 1, "nr_hugepages"),
        pool_file(tree, 1, "surplus_hugepages"),
    ]
    assert kernel.files == {} and len(kernel.pool_writes) == 2
    kernel.opens.clear()
    pool.release("1")
    assert len(kernel.opens) == 4 and kernel.files == {}
    assert (nr(kernel, 0), nr(kernel, 1)) == (0, 0)
    pool.release("1")  # nothing to release: no pool is opened
    assert len(kernel.opens) == 4


def test_pool_files_are_closed_when_the_operation_fails_or_dies(tmp_path, tree):
    kernel = FakeKernel(cap={0: 3})
    pool = make_pool(tmp_path, tree, kernel, compact_retries=1)
    with pytest.raises(HugepageError, match="wanted 4 more"):
        pool.reserve("short", M2, {0: 4})
    assert kernel.files == {} and nr(kernel, 0) == 0
    crash_at(kernel, "after")
    with pytest.raises(Crash):
        pool.reserve("dead", M2, {0: 2})
    assert kernel.files == {} and nr(kernel, 0) == 2
    pool.release("other")  # settling the dead reservation opens the pool too
    assert kernel.files == {} and nr(kernel, 0) == 0


def test_a_pool_that_cannot_be_opened_fails_before_the_intent_is_written(tmp_path, tree, kernel, monkeypatch):
    pool = make_pool(tmp_path, tree, kernel)
    real_open = kernel.open

    def open_(path: str, writable: bool = False) -> int:
        if writable:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, writable)

    monkeypatch.setattr(kernel, "open", open_)
    with pytest.raises(HugepageError, match=r"cannot open hugepage pool .*/node0/.*: Permission denied"):
        pool.reserve("1", M2, {0: 1})
    assert pool.ledger("1") is None and nr(kernel, 0) == 0 and kernel.files == {}


def test_the_real_sysfs_io_rereads_and_rewrites_at_offset_0(tmp_path):
    """On a plain file as on sysfs: each pread_int reads from the start, each pwrite_int writes there."""
    path = tmp_path / "nr_hugepages"
    path.write_text("7\n")
    io = SysfsIO()
    fd = io.open(str(path), writable=True)
    try:
        assert io.pread_int(fd) == 7 and io.pread_int(fd) == 7
        io.pwrite_int(fd, 9)
        assert io.pread_int(fd) == 9 and path.read_text() == "9\n"
    finally:
        io.close(fd)
    io.write_int(str(path), 5)
    assert io.read_int(str(path)) == 5
