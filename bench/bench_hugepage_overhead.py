#!/usr/bin/env python3
"""Benchmark: what the hugepage manager's fixed cost is made of, next to raw sysfs writes.

bench_hugepages.py gives the verdict (manager against raw at 1, 4 and 8 GiB).  This script explains
the 1 GiB figure.  It times, interleaved and shuffled per round like bench_hugepages.py, one
grow+shrink of PAGES 2M pages on one NUMA node by:

  raw, raw again   the two sysfs writes alone (raw again: the noise of the method, ~1.00)
  manager          HugepagePool.from_config(...).reserve then .release, as the prolog and epilog do
  floor            the protocol's system calls with no other Python (bench_hugepages.ProtocolFloor)
  cut-down floors  the floor without some of its steps, none of which a crash-safe manager may drop:
                   no boot id; no boot id, ledger listing or surplus reads; ledger files only (no lock
                   either); the lock only (no ledger files)

and prints each one's ratio to raw and its fixed cost (median minus raw's median) in microseconds.
Run it at --pages 512 (1 GiB) and at --pages 1: the fixed cost after a 512-page kernel operation,
which leaves the CPU caches cold, against the same work after an operation that touched little.

With --writes-on-cpu CPU the script pins itself to another CPU and adds two variants whose pool
writes run on a thread pinned to CPU: "raw, writes on CPU" and "manager, writes on CPU" (its
SysfsIO hands each pwrite to that thread).  The question: does the manager's work after a
kernel operation get cheaper when the kernel's pass over the struct pages cools another CPU's
caches, by more than the hand-over between threads costs?

    sudo .venv/bin/python bench/bench_hugepage_overhead.py [--pages 512] [--rounds 41]
        [--ledger-parent /dev/shm] [--node 0] [--seed 1] [--writes-on-cpu CPU]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from typing import Callable

from bench_hugepages import M2, ProtocolFloor, write_pool_size  # this script's directory is on sys.path

from slurm_vc.config import SiteConfig
from slurm_vc.hugepages import HugepagePool, SysfsIO, pool_dir

CUT_DOWN = {  # name -> the ProtocolFloor steps it drops
    "floor, no boot id": {"boot_id": False},
    "floor, no boot id/listing/surplus": {"boot_id": False, "listing": False, "surplus": False},
    "ledger files only": {"lock": False, "boot_id": False, "listing": False, "surplus": False},
    "lock only": {"boot_id": False, "listing": False, "surplus": False, "ledger": False},
}


class Pool:
    """Raw writes to one node's 2M pool (nr_hugepages), given back by delta."""

    def __init__(self, node: int):
        self.path = os.path.join(pool_dir("/sys", node, M2), "nr_hugepages")

    def read(self) -> int:
        with open(self.path, "rb") as pool:
            return int(pool.read())

    def raw(self, pages: int, write: Callable[[str, int], object] = write_pool_size) -> float:
        """Time the two writes of an admin's grow and shrink (the reads between are not timed).

        ``write(nr_path, value)`` makes each write: the plain sysfs write, or one run elsewhere.
        """
        base = self.read()
        start = time.perf_counter()
        write(self.path, base + pages)
        middle = time.perf_counter()
        current = self.read()
        resume = time.perf_counter()
        write(self.path, max(0, current - pages))
        return (middle - start) + (time.perf_counter() - resume)


class CpuWorker:
    """A daemon thread pinned to one CPU that runs the calls handed to it, one at a time."""

    def __init__(self, cpu: int):
        self.cpu = cpu
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        os.sched_setaffinity(0, {self.cpu})  # pid 0 from a thread: this thread only
        while True:
            function, args = self._calls.get()
            try:
                self._results.put((True, function(*args)))
            except BaseException as exc:  # handed back to the caller
                self._results.put((False, exc))

    def call(self, function: Callable, *args: object) -> object:
        """Run ``function(*args)`` on the worker's CPU and return its result (or raise its error)."""
        self._calls.put((function, args))
        ok, value = self._results.get()
        if not ok:
            raise value
        return value


class WritesOnCpu(SysfsIO):
    """The manager's SysfsIO with every pool write (pwrite) run by a CpuWorker."""

    def __init__(self, worker: CpuWorker):
        self.worker = worker

    def pwrite_int(self, fd: int, value: int) -> None:
        self.worker.call(os.pwrite, fd, b"%d" % value, 0)


def timed(operation: Callable[[str], object]) -> Callable[[str], float]:
    def run(job: str) -> float:
        start = time.perf_counter()
        operation(job)
        return time.perf_counter() - start

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=512, help="2M pages per grow (512 = 1 GiB)")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--ledger-parent", default="/dev/shm", help="where the ledger directories go")
    parser.add_argument("--node", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1, help="of the per-round shuffle")
    parser.add_argument(
        "--writes-on-cpu", type=int, metavar="CPU", help="add variants whose pool writes run there"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_hugepage_overhead: needs root (writes the kernel's hugepage pools)", file=sys.stderr)
        return 2
    worker = None
    if args.writes_on_cpu is not None:
        others = sorted(os.sched_getaffinity(0) - {args.writes_on_cpu})
        if args.writes_on_cpu not in os.sched_getaffinity(0) or not others:
            print(
                f"bench_hugepage_overhead: --writes-on-cpu {args.writes_on_cpu}: need that CPU and another"
                f" among this process's CPUs {sorted(os.sched_getaffinity(0))}",
                file=sys.stderr,
            )
            return 2
        os.sched_setaffinity(0, {others[0]})  # before the worker starts: it sets its own
        worker = CpuWorker(args.writes_on_cpu)
    pool, pages = Pool(args.node), args.pages
    runtime_dir = tempfile.mkdtemp(prefix="slurm-vc-bench-hpo-", dir=args.ledger_parent)
    config = SiteConfig(runtime_dir=runtime_dir)
    floor_dir = os.path.join(runtime_dir, "floor")
    os.makedirs(floor_dir)
    floors = {"floor": ProtocolFloor(floor_dir, args.node)}
    floors.update({name: ProtocolFloor(floor_dir, args.node, **drop) for name, drop in CUT_DOWN.items()})

    def manager(job: str) -> None:
        HugepagePool.from_config(config).reserve(job, M2, {args.node: pages})
        HugepagePool.from_config(config).release(job)

    variants: dict[str, Callable[[str], float]] = {
        "raw": lambda job: pool.raw(pages),
        "raw again": lambda job: pool.raw(pages),
        "manager": timed(manager),
    }
    variants.update(
        {name: timed(partial(floor.reserve_and_release, pages=pages)) for name, floor in floors.items()}
    )
    if worker is not None:
        writes_on_cpu = WritesOnCpu(worker)

        def manager_writes_on_cpu(job: str) -> None:
            HugepagePool.from_config(config, io=writes_on_cpu).reserve(job, M2, {args.node: pages})
            HugepagePool.from_config(config, io=writes_on_cpu).release(job)

        write_on_cpu = partial(worker.call, write_pool_size)
        variants[f"raw, writes on CPU {worker.cpu}"] = lambda job: pool.raw(pages, write_on_cpu)
        variants[f"manager, writes on CPU {worker.cpu}"] = timed(manager_writes_on_cpu)
    times: dict[str, list[float]] = {name: [] for name in variants}
    shuffle = random.Random(args.seed)
    start_pool, load_before = pool.read(), os.getloadavg()[0]
    completed, before = False, start_pool
    try:
        for round_index in range(args.rounds + 1):
            order = list(variants)
            shuffle.shuffle(order)
            for name in order:
                before = pool.read()
                completed = False
                took = variants[name](f"{round_index}")
                completed = True
                if round_index:  # round 0 warms up
                    times[name].append(took)
    finally:
        for ledger in HugepagePool.from_config(config).list_ledgers():  # after a failure: give back
            HugepagePool.from_config(config).release(ledger.job_id)
        if not completed and pool.read() > before:  # a raw or floor grow without its shrink
            write_pool_size(pool.path, before)
        shutil.rmtree(runtime_dir, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    raw = medians["raw"]
    print(f"# node {args.node}, {pages} x 2M pages, {args.rounds} rounds (+1 warm-up), seed {args.seed}")
    if worker is not None:
        print(
            f"# this process on CPU {sorted(os.sched_getaffinity(0))},"
            f" the pool writes of the last two variants on CPU {worker.cpu}"
        )
    print(f"# ledgers under {args.ledger_parent}; load average {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    print(f"# pool before {start_pool} pages, after {pool.read()} pages")
    print("| variant | median (us) | ratio to raw | fixed cost (us) |")
    print("|---|---|---|---|")
    for name, median in medians.items():
        print(f"| {name} | {median * 1e6:.0f} | {median / raw:.3f} | {(median - raw) * 1e6:+.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
