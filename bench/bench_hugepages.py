#!/usr/bin/env python3
"""Benchmark: hugepage grow+shrink through HugepagePool against raw sysfs writes, in the same run.

For 1, 4 and 8 GiB of 2M pages on one NUMA node, each round times
  raw:      write nr_hugepages = base + n, then nr_hugepages = current - n   (an admin's two echos)
  manager:  HugepagePool.reserve(job, 2M, {node: n}) then release(job) (lock, ledger, read-back),
            each through a new manager as the prolog and the epilog make one
with the manager set up four ways:
  default:     exactly what the prolog uses: HugepagePool.from_config(SiteConfig(runtime_dir=...)),
               ledgers in <runtime_dir>/hugepages, runtime_dir a fresh directory under /run (the
               default runtime_dir is /run/slurm-vc; a temporary one keeps clear of a real node's)
  tmpfs:       the same, ledgers under /dev/shm (a tmpfs even where /run is not one)
  disk:        ledgers under a state dir on disk (/var/tmp), no fsync (the default before runtime_dir)
  disk+fsync:  the same with fsync of every ledger and of the directory (with --fsync)
  floor:       (with --floor) the protocol's floor: the system calls the manager makes for one
               reserve+release on one node (lock, boot id, listing, pool reads, intent, grow,
               read-back, rename, release line, shrink, unlink) with no other Python around them:
               no checks, no settling, no error handling, ledgers in the default variant's place
The order is shuffled every round (seeded) so page cache, compaction and writeback effects hit every
variant alike (a fixed rotation always ran the same variant right after raw); one warm-up round per
size is discarded.  --pause S sleeps before each timing: every variant then starts with cold caches,
which costs the manager's Python far more than raw's two system calls.  --baseline COMMIT adds
that commit's manager (ledgers on disk and on tmpfs), loaded from git next to today's.
Prints the file system of each ledger directory, medians and the manager/raw ratio (goal: within
10%).  Needs root; the pool is given back by delta (other jobs' pages are left alone) even on failure.

    sudo .venv/bin/python bench/bench_hugepages.py [--rounds 15] [--node 0] [--sizes 1,4,8]
        [--run-parent /run] [--state-parent /var/tmp] [--tmpfs-parent /dev/shm] [--fsync]
        [--pause 0] [--seed 1] [--baseline COMMIT] [--floor]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Callable, Optional

from slurm_vc.config import SiteConfig
from slurm_vc.hugepages import HugepagePool, pool_dir
from slurm_vc.units import GIB, MIB

M2 = 2 * MIB


def file_system(path: str) -> str:
    """The type of the file system holding ``path`` (longest mount point of /proc/mounts)."""
    best, kind = "", "?"
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1]
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def hugepages_at(commit: str) -> ModuleType:
    """slurm_vc/hugepages.py as of ``commit`` (git show), loaded next to the current one."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "-C", repo, "show", f"{commit}:slurm_vc/hugepages.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"slurm_vc._hugepages_{commit[:12]}"
    module = ModuleType(name)
    module.__package__ = "slurm_vc"  # its relative imports (errors, units) resolve to today's modules
    sys.modules[name] = module  # dataclasses look their module up by name
    exec(compile(source, f"{commit}:slurm_vc/hugepages.py", "exec"), module.__dict__)
    return module


def write_pool_size(nr_path: str, value: int) -> None:
    """An admin's ``echo VALUE > nr_hugepages``: open, one write, close (the raw baseline)."""
    fd = os.open(nr_path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


class ProtocolFloor:
    """The manager's system calls for one reserve+release on one node, and nothing else.

    The keyword flags drop steps of the protocol (all kept by default, as the manager does them);
    ``bench_hugepage_overhead.py`` times such cut-down protocols to show what each step costs.
    Without ``surplus`` the pool is counted by nr_hugepages alone; without ``ledger`` no file is
    written, read, renamed or removed.
    """

    def __init__(
        self,
        ledger_dir: str,
        node: int,
        *,
        lock: bool = True,
        boot_id: bool = True,
        listing: bool = True,
        surplus: bool = True,
        ledger: bool = True,
    ):
        self.ledger_dir = ledger_dir
        self.pool = pool_dir("/sys", node, M2)
        self.node = node
        self.lock, self.boot_id, self.listing = lock, boot_id, listing
        self.surplus, self.ledger = surplus, ledger

    def begin(self) -> tuple[int, bytes]:
        """Take the pool lock, read the boot id, list the ledgers: how every operation starts."""
        lock, boot_id = -1, b""
        if self.lock:
            lock = os.open("/sys/devices/system/node", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if self.boot_id:
            fd = os.open("/proc/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
            boot_id = os.read(fd, 64).strip()
            os.close(fd)
        if self.listing:
            os.listdir(self.ledger_dir)
        return lock, boot_id

    def open_pool(self) -> tuple[int, int]:
        """nr_hugepages read-write, and surplus_hugepages (-1 when the surplus is not counted)."""
        nr = os.open(f"{self.pool}/nr_hugepages", os.O_RDWR | os.O_CLOEXEC)
        if not self.surplus:
            return nr, -1
        return nr, os.open(f"{self.pool}/surplus_hugepages", os.O_RDONLY | os.O_CLOEXEC)

    def read_surplus(self, surplus: int) -> int:
        return int(os.pread(surplus, 64, 0)) if surplus >= 0 else 0

    def end(self, lock: int, nr: int, surplus: int) -> None:
        """Close the pool files and drop the lock."""
        for fd in (nr, surplus, lock):
            if fd >= 0:
                os.close(fd)

    def reserve(self, job: str, pages: int) -> int:
        lock, boot_id = self.begin()
        nr, surplus = self.open_pool()
        before, adopted = int(os.pread(nr, 64, 0)), self.read_surplus(surplus)
        path = f"{self.ledger_dir}/{job}.growing.json"
        if self.ledger:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            os.write(
                fd,
                b'{"version":1,"job_id":"%s","page_size":%d,"state":"growing","boot_id":"%s","sysfs":"/sys",'
                b'"nodes":{"%d":{"before":%d,"surplus_before":%d,"asked":%d,"target":%d,"added":null,'
                b'"release_from":null,"release_target":null}}}'
                % (job.encode(), M2, boot_id, self.node, before - adopted, adopted, pages, before + pages),
            )
            os.close(fd)
        os.pwrite(nr, b"%d" % (before + pages), 0)
        added = int(os.pread(nr, 64, 0)) - self.read_surplus(surplus) - (before - adopted)
        if self.ledger:
            os.rename(path, f"{self.ledger_dir}/{job}.held.json")
        self.end(lock, nr, surplus)
        return added

    def release(self, job: str, pages: int) -> None:
        lock, _ = self.begin()
        path = f"{self.ledger_dir}/{job}.held.json"
        added = pages  # what reserve added, without a ledger to say so
        if self.ledger:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            entry = json.loads(os.read(fd, 65536))["nodes"][str(self.node)]
            os.close(fd)
            added = entry["target"] - entry["before"]
        nr, surplus = self.open_pool()
        now = int(os.pread(nr, 64, 0)) - self.read_surplus(surplus)
        target = now - added
        if self.ledger:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            os.write(fd, b'\n{"release":{"%d":[%d,%d]}}' % (self.node, now, target))
            os.close(fd)
        os.pwrite(nr, b"%d" % target, 0)
        if self.ledger:
            os.unlink(path)
        self.end(lock, nr, surplus)

    def reserve_and_release(self, job: str, pages: int) -> int:
        """One job's reserve then release; returns the pages the reserve added."""
        added = self.reserve(job, pages)
        self.release(job, pages)
        return added


class Bench:
    def __init__(
        self,
        node: int,
        run_parent: str,
        state_parent: str,
        tmpfs_parent: str,
        fsync: bool,
        baseline: Optional[str] = None,
        floor: bool = False,
    ):
        self.node = node
        self.nr_path = os.path.join(pool_dir("/sys", node, M2), "nr_hugepages")
        self.dirs = [
            tempfile.mkdtemp(prefix="slurm-vc-bench-hp-", dir=parent)
            for parent in (run_parent, tmpfs_parent, state_parent)
        ]
        run_dir, tmpfs_dir, state_dir = self.dirs
        run_config, tmpfs_config = SiteConfig(runtime_dir=run_dir), SiteConfig(runtime_dir=tmpfs_dir)
        # The prolog and the epilog each make their own manager (from the site config they loaded):
        # so does every timed reserve and release here.
        self.factories: dict[str, Callable[[], HugepagePool]] = {
            "default": lambda: HugepagePool.from_config(run_config),
            "tmpfs": lambda: HugepagePool.from_config(tmpfs_config),
            "disk": lambda: HugepagePool(state_dir, fsync=False),
        }
        if fsync:
            self.factories["disk+fsync"] = lambda: HugepagePool(state_dir, fsync=True)
        if baseline:  # the manager of another commit, ledgers in directories of its own
            old = hugepages_at(baseline).HugepagePool
            self.factories[f"{baseline[:7]} disk"] = lambda: old(os.path.join(state_dir, "old"))
            self.factories[f"{baseline[:7]} tmpfs"] = lambda: old(os.path.join(tmpfs_dir, "old"))
        self.pools = {name: factory() for name, factory in self.factories.items()}
        self.floor: Optional[ProtocolFloor] = None
        if floor:
            self.floor = ProtocolFloor(self.pools["default"].ledger_dir, node)
            os.makedirs(self.floor.ledger_dir, exist_ok=True)
        self.raw_outstanding = 0  # pages a raw round added and has not taken back yet
        self.disturbed = 0  # rounds where the pool did not move by exactly the pages asked
        self.job = 0

    def persistent(self) -> int:
        counts = self.pools["disk"].counts(self.node, M2)
        return counts.persistent

    def raw(self, pages: int) -> float:
        # Hold the pool lock the managers take (untimed) so other managers' jobs on this machine
        # neither disturb nor get disturbed by the raw writes.
        lock = os.open("/sys/devices/system/node", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            base = self.persistent()
            start = time.perf_counter()
            write_pool_size(self.nr_path, base + pages)
            self.raw_outstanding = pages
            middle = time.perf_counter()
            current = self.persistent()  # read outside the timed part
            resume = time.perf_counter()
            # By delta: pages another job added meanwhile stay.
            write_pool_size(self.nr_path, max(0, current - pages))
            self.raw_outstanding = 0
            end = time.perf_counter()
        finally:
            os.close(lock)
        if current - base != pages:
            self.disturbed += 1  # the kernel fell short, or a writer outside the managers interfered
        return (middle - start) + (end - resume)

    def manager(self, variant: str, pages: int) -> float:
        factory = self.factories[variant]
        self.job += 1
        job = f"bench-{os.getpid()}-{self.job}"
        start = time.perf_counter()
        reservation = factory().reserve(job, M2, {self.node: pages})  # the prolog
        factory().release(job)  # the epilog
        took = time.perf_counter() - start
        if reservation.added[self.node] != pages:
            self.disturbed += 1
        return took

    def protocol_floor(self, pages: int) -> float:
        assert self.floor is not None
        self.job += 1
        job = f"floor-{os.getpid()}-{self.job}"
        start = time.perf_counter()
        added = self.floor.reserve_and_release(job, pages)
        took = time.perf_counter() - start
        if added != pages:
            self.disturbed += 1
        return took

    def restore(self) -> None:
        try:
            for pool in self.pools.values():
                for ledger in pool.list_ledgers():
                    pool.release(ledger.job_id)
            if self.raw_outstanding:
                write_pool_size(self.nr_path, max(0, self.persistent() - self.raw_outstanding))
        finally:
            for directory in self.dirs:
                shutil.rmtree(directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--sizes", default="1,4,8", help="GiB of 2M pages, comma-separated")
    parser.add_argument("--run-parent", default="/run", help="where the default variant's runtime_dir goes")
    parser.add_argument("--state-parent", default="/var/tmp", help="a directory on disk for ledgers")
    parser.add_argument("--tmpfs-parent", default="/dev/shm", help="a directory on tmpfs for ledgers")
    parser.add_argument("--fsync", action="store_true", help="also time ledgers on disk with fsync")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds of idle before each timing")
    parser.add_argument("--seed", type=int, default=1, help="of the per-round shuffle of the variants")
    parser.add_argument("--baseline", help="also time the manager of this git commit (disk and tmpfs)")
    parser.add_argument("--floor", action="store_true", help="also time the protocol's bare system calls")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_hugepages: needs root (writes the kernel's hugepage pools)", file=sys.stderr)
        return 2
    bench = Bench(
        args.node,
        args.run_parent,
        args.state_parent,
        args.tmpfs_parent,
        args.fsync,
        args.baseline,
        floor=args.floor,
    )
    start_pool = bench.persistent()
    load_before = f"{os.getloadavg()[0]:.2f}"
    managers = list(bench.pools) + (["floor"] if args.floor else [])  # the variants compared with raw
    variants = ["raw", *managers]
    shuffle = random.Random(args.seed)
    results = []
    try:
        for gib in [int(size) for size in args.sizes.split(",")]:
            pages = gib * GIB // M2
            times: dict[str, list[float]] = {variant: [] for variant in variants}
            for round_index in range(args.rounds + 1):
                order = list(variants)
                shuffle.shuffle(order)  # a fixed rotation would always put the same variant after raw
                for variant in order:
                    time.sleep(args.pause)  # > 0: every timing starts with cold caches (after a sleep)
                    if variant == "raw":
                        took = bench.raw(pages)
                    elif variant == "floor":
                        took = bench.protocol_floor(pages)
                    else:
                        took = bench.manager(variant, pages)
                    if round_index:  # round 0 warms up
                        times[variant].append(took)
            medians = {variant: statistics.median(values) for variant, values in times.items()}
            results.append((gib, pages, medians))
    finally:
        bench.restore()
    end_pool = bench.persistent()

    print(f"# {platform.node()} {platform.release()}, node {args.node}, {args.rounds} rounds (+1 warm-up)")
    print(f"# pool before {start_pool} pages, after {end_pool} pages (other jobs may have changed it)")
    print(f"# disturbed rounds (pool moved by other than the pages asked): {bench.disturbed}")
    print(f"# load average before/after: {load_before} / {os.getloadavg()[0]:.2f}")
    for name, pool in bench.pools.items():
        print(f"# {name}: ledgers in {pool.ledger_dir} ({file_system(pool.ledger_dir)}), fsync={pool.fsync}")
    print(
        "| size | pages | raw sysfs (ms) | "
        + " | ".join(f"{'' if name == 'floor' else 'manager, '}{name} (ms) | ratio" for name in managers)
        + " |"
    )
    print("|---|---|---|" + "---|---|" * len(managers))
    for gib, pages, medians in results:
        raw = medians["raw"]
        cells = " | ".join(f"{medians[name] * 1000:.2f} | {medians[name] / raw:.2f}" for name in managers)
        print(f"| {gib} GiB | {pages} | {raw * 1000:.2f} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
