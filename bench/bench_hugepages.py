#!/usr/bin/env python3
"""Benchmark: hugepage grow+shrink through HugepagePool against raw sysfs writes, in the same run.

For 1, 4 and 8 GiB of 2M pages on one NUMA node, each round times
  raw:      write nr_hugepages = base + n, then nr_hugepages = current - n   (an admin's two echos)
  manager:  HugepagePool.reserve(job, 2M, {node: n}) then release(job) (lock, ledger, read-back)
in three set-ups: ledgers on disk with fsync, on disk without fsync (the default), and on tmpfs
(where a ledger arguably belongs: a hugepage pool does not outlive a boot either).  The order
rotates every round so page cache and compaction effects hit every variant alike; one warm-up round
per size is discarded.
Prints medians and the manager/raw ratio (goal: within 10%).  Needs root; the pool is given back
by delta (other jobs' pages are left alone) even on failure.

    sudo .venv/bin/python bench/bench_hugepages.py [--rounds 9] [--node 0] [--sizes 1,4,8]
        [--state-parent /var/tmp] [--tmpfs-parent /dev/shm]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from slurm_vc.hugepages import HugepagePool, pool_dir
from slurm_vc.units import GIB, MIB

M2 = 2 * MIB


class Bench:
    def __init__(self, node: int, state_parent: str, tmpfs_parent: str):
        self.node = node
        self.nr_path = os.path.join(pool_dir("/sys", node, M2), "nr_hugepages")
        self.state_dirs = [
            tempfile.mkdtemp(prefix="slurm-vc-bench-hp-", dir=parent)
            for parent in (state_parent, tmpfs_parent)
        ]
        self.pools = {
            "disk+fsync": HugepagePool(self.state_dirs[0], fsync=True),
            "disk": HugepagePool(self.state_dirs[0], fsync=False),
            "tmpfs": HugepagePool(self.state_dirs[1], fsync=True),
        }
        self.raw_outstanding = 0  # pages a raw round added and has not taken back yet
        self.disturbed = 0  # rounds where the pool did not move by exactly the pages asked
        self.job = 0

    def persistent(self) -> int:
        counts = self.pools["disk"].counts(self.node, M2)
        return counts.persistent

    def write(self, value: int) -> None:
        fd = os.open(self.nr_path, os.O_WRONLY)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)

    def raw(self, pages: int) -> float:
        # Hold the pool lock the managers take (untimed) so other managers' jobs on this machine
        # neither disturb nor get disturbed by the raw writes.
        lock = os.open("/sys/devices/system/node", os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            base = self.persistent()
            start = time.perf_counter()
            self.write(base + pages)
            self.raw_outstanding = pages
            middle = time.perf_counter()
            current = self.persistent()  # read outside the timed part
            resume = time.perf_counter()
            self.write(max(0, current - pages))  # by delta: pages another job added meanwhile stay
            self.raw_outstanding = 0
            end = time.perf_counter()
        finally:
            os.close(lock)
        if current - base != pages:
            self.disturbed += 1  # the kernel fell short, or a writer outside the managers interfered
        return (middle - start) + (end - resume)

    def manager(self, variant: str, pages: int) -> float:
        pool = self.pools[variant]
        self.job += 1
        job = f"bench-{os.getpid()}-{self.job}"
        start = time.perf_counter()
        reservation = pool.reserve(job, M2, {self.node: pages})
        reservation.release()
        took = time.perf_counter() - start
        if reservation.added[self.node] != pages:
            self.disturbed += 1
        return took

    def restore(self) -> None:
        try:
            for pool in self.pools.values():
                for ledger in pool.list_ledgers():
                    pool.release(ledger.job_id)
            if self.raw_outstanding:
                self.write(max(0, self.persistent() - self.raw_outstanding))
        finally:
            for state_dir in self.state_dirs:
                shutil.rmtree(state_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--sizes", default="1,4,8", help="GiB of 2M pages, comma-separated")
    parser.add_argument("--state-parent", default="/var/tmp", help="a directory on disk for ledgers")
    parser.add_argument("--tmpfs-parent", default="/dev/shm", help="a directory on tmpfs for ledgers")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_hugepages: needs root (writes the kernel's hugepage pools)", file=sys.stderr)
        return 2
    bench = Bench(args.node, args.state_parent, args.tmpfs_parent)
    start_pool = bench.persistent()
    variants = ["raw", *bench.pools]
    results = []
    try:
        for gib in [int(size) for size in args.sizes.split(",")]:
            pages = gib * GIB // M2
            times: dict[str, list[float]] = {variant: [] for variant in variants}
            for round_index in range(args.rounds + 1):
                shift = round_index % len(variants)
                order = variants[shift:] + variants[:shift]
                for variant in order:
                    took = bench.raw(pages) if variant == "raw" else bench.manager(variant, pages)
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
    managers = list(bench.pools)
    print(
        "| size | pages | raw sysfs (ms) | "
        + " | ".join(f"manager, {name} (ms) | ratio" for name in managers)
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
