"""The hugepage pool manager on this machine's real kernel pools (root).

Other tests may start guests backed by 2M pages at the same time, so every assertion is about a delta
this test caused, and the finalizer gives back exactly what this test added (it forces the starting
value only if its own release failed).
"""

from __future__ import annotations

import fcntl
import glob
import os
import re

import pytest

from slurm_vc.errors import HugepageError, StateError
from slurm_vc.hugepages import HugepagePool, SysfsIO, pool_dir
from slurm_vc.units import GIB, MIB

pytestmark = pytest.mark.integration

M2 = 2 * MIB
G1 = GIB
SYSFS = "/sys"


def numa_nodes() -> list[int]:
    return sorted(
        int(re.search(r"node(\d+)$", path)[1])
        for path in glob.glob(f"{SYSFS}/devices/system/node/node[0-9]*")
    )


def persistent(node: int, size: int) -> int:
    directory = pool_dir(SYSFS, node, size)
    with open(f"{directory}/nr_hugepages") as nr, open(f"{directory}/surplus_hugepages") as surplus:
        return int(nr.read()) - int(surplus.read())


def nr_hugepages(node: int, size: int) -> int:
    with open(f"{pool_dir(SYSFS, node, size)}/nr_hugepages") as handle:
        return int(handle.read())


def meminfo_hugepages_total() -> int:
    """HugePages_Total of /proc/meminfo: the default (2M on x86) size, all nodes."""
    with open("/proc/meminfo") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("HugePages_Total:"))


@pytest.fixture
def real_pool(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to write the kernel's hugepage pools")
    nodes = numa_nodes()
    if not nodes or not all(os.path.isdir(pool_dir(SYSFS, node, M2)) for node in nodes):
        pytest.skip("no per-NUMA-node 2M hugepage pools in sysfs")
    sizes = [size for size in (M2, G1) if os.path.isdir(pool_dir(SYSFS, nodes[0], size))]
    snapshot = {(node, size): persistent(node, size) for node in nodes for size in sizes}
    pool = HugepagePool(str(tmp_path / "state"), SYSFS, lock_timeout=30, compact_retries=1)
    yield pool, nodes, snapshot
    forced = False
    for ledger in pool.list_ledgers():
        try:
            pool.release(ledger.job_id)
        except Exception:  # the finalizer must restore the pools whatever went wrong
            forced = True
    if forced or pool.list_ledgers():
        for (node, size), pages in snapshot.items():
            with open(f"{pool_dir(SYSFS, node, size)}/nr_hugepages", "w") as handle:
                handle.write(str(pages))


def test_reserve_and_release_2m_pages_on_the_real_kernel(real_pool):
    """Other tests' managers may change the same pool between our calls (they serialise with us only
    inside reserve/release), so each check compares readings taken right around one call."""
    pool, nodes, snapshot = real_pool
    node = nodes[0]

    reservation = pool.reserve("it-hp-2m", M2, {node: 64})
    after = persistent(node, M2)

    ledger = pool.ledger("it-hp-2m")
    assert ledger.state == "held" and ledger.nodes[node].asked == 64
    assert reservation.added[node] >= 64  # 64 fresh pages, plus any surplus the grow adopted
    assert after - ledger.nodes[node].before == reservation.added[node]  # the kernel really gave them
    total = meminfo_hugepages_total()
    assert total == sum(nr_hugepages(n, M2) for n in nodes)
    assert total >= 64

    before_release = persistent(node, M2)
    reservation.release()
    after_release = persistent(node, M2)

    assert before_release - after_release == reservation.added[node]
    assert pool.ledger("it-hp-2m") is None
    writes = []
    real_write, real_pwrite = pool.io.write_int, pool.io.pwrite_int
    pool.io.write_int = lambda path, value: (writes.append(path), real_write(path, value))
    pool.io.pwrite_int = lambda fd, value: (writes.append(fd), real_pwrite(fd, value))
    pool.release("it-hp-2m")  # a second release is a no-op
    assert writes == [] and pool.ledger("it-hp-2m") is None


def test_a_pread_at_offset_0_shows_the_pool_after_a_pwrite(real_pool):
    """What the manager relies on: a sysfs attribute kept open shows its current value at each pread
    at offset 0, and a pwrite at offset 0 sets it, as fresh opens see."""
    _, nodes, _ = real_pool
    node = nodes[0]
    directory = pool_dir(SYSFS, node, M2)
    io = SysfsIO()
    lock = os.open(f"{SYSFS}/devices/system/node", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(lock, fcntl.LOCK_EX)  # the managers' pool lock: no manager changes the pool meanwhile
    nr_fd = io.open(f"{directory}/nr_hugepages", writable=True)
    surplus_fd = io.open(f"{directory}/surplus_hugepages")
    try:
        nr, surplus = io.pread_int(nr_fd), io.pread_int(surplus_fd)
        assert nr == nr_hugepages(node, M2) and nr - surplus == persistent(node, M2)
        io.pwrite_int(nr_fd, nr + 2)
        grown = io.pread_int(nr_fd)
        assert grown == nr_hugepages(node, M2) and grown > nr  # 2 pages (1 if memory is that tight)
        assert io.pread_int(surplus_fd) == io.read_int(f"{directory}/surplus_hugepages")
        io.pwrite_int(nr_fd, nr - surplus)  # back to the persistent count found
        assert io.pread_int(nr_fd) == nr_hugepages(node, M2)
        assert io.pread_int(nr_fd) - io.pread_int(surplus_fd) == persistent(node, M2) == nr - surplus
    finally:
        io.close(nr_fd)
        io.close(surplus_fd)
        os.close(lock)


def test_reserve_1g_pages_or_roll_back_on_the_real_kernel(real_pool):
    pool, nodes, snapshot = real_pool
    node = nodes[0]
    if (node, G1) not in snapshot:
        pytest.skip("this kernel offers no 1G hugepages")
    before_1g = persistent(node, G1)
    try:
        reservation = pool.reserve("it-hp-1g", G1, {node: 2})
    except HugepageError as error:
        # Too fragmented on this machine: the manager must have restored the pool.
        assert f"NUMA node {node}" in str(error) and "wanted 2" in str(error)
        assert persistent(node, G1) == before_1g
        assert pool.ledger("it-hp-1g") is None
        return
    assert reservation.added[node] >= 2
    assert persistent(node, G1) - before_1g == reservation.added[node]
    reservation.release()
    assert persistent(node, G1) == before_1g
    assert pool.ledger("it-hp-1g") is None


def test_the_sysfs_node_directory_is_the_one_lock_for_every_ledger_dir(real_pool, tmp_path):
    """Managers with different ledger directories (two simulated nodes) change the same kernel pools:
    the flock on the real sysfs node directory, held by another process, must stop this one."""
    import subprocess
    import sys

    pool, nodes, _ = real_pool
    other_node = HugepagePool(str(tmp_path / "other-node"), SYSFS, lock_timeout=0.3)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open('{SYSFS}/devices/system/node', os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError, match="hugepage pool lock /sys/devices/system/node is held"):
            other_node.reserve("it-hp-lock", M2, {nodes[0]: 1})
        assert other_node.ledger("it-hp-lock") is None
    finally:
        holder.stdin.close()  # the holder exits and its flock goes with it
        holder.wait(timeout=10)
    reservation = other_node.reserve("it-hp-lock", M2, {nodes[0]: 1})
    try:
        assert other_node.ledger_dir != pool.ledger_dir and reservation.added[nodes[0]] >= 1
        assert not os.path.exists(os.path.join(other_node.ledger_dir, ".lock"))  # no second lock taken
    finally:
        reservation.release()  # the fixture cleans up only its own pool's ledgers
    assert other_node.ledger("it-hp-lock") is None
