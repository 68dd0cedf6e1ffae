#!/usr/bin/env python3
"""Benchmark: ``slurm-vc --help`` start-up as a fresh process (goal: median < 150 ms).

Runs, interleaved round by round so machine load hits all alike, N times each:
  - ``python -c pass``               the interpreter's own start-up (baseline, same interpreter);
  - ``slurm-vc --help``              the installed console script (what users and Slurm hooks run);
  - ``python -m slurm_vc --help``    the same without the entry-point wrapper.
Prints medians, the overhead over the baseline, and the slowest imports of ``--help``
(``python -X importtime``), which is where to look when the goal is missed.  "Cold" here means a
new process each time; the OS page cache and __pycache__ stay warm (dropping the machine's caches
would disturb everything else running on it).

    .venv/bin/python bench/bench_cli_startup.py [--runs 30] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_MS = 150.0


def run_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def slowest_imports(top: int) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) of the ``--help`` imports with the largest cumulative time."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "slurm_vc", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for text in result.stderr.splitlines():
        if not text.startswith("import time:") or "self [us]" in text:
            continue
        self_us, cumulative_us, name = text.split(":", 1)[1].split("|")
        rows.append((int(self_us), int(cumulative_us), name.rstrip()))
    return sorted(rows, key=lambda row: -row[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--top", type=int, default=12, help="how many imports to list")
    args = parser.parse_args()

    script = shutil.which("slurm-vc", path=str(Path(sys.executable).parent)) or shutil.which("slurm-vc")
    commands = {"python -c pass (baseline)": [sys.executable, "-c", "pass"]}
    if script:
        commands["slurm-vc --help"] = [script, "--help"]
    commands["python -m slurm_vc --help"] = [sys.executable, "-m", "slurm_vc", "--help"]
    for command in commands.values():  # warm-up: page cache, __pycache__
        run_once(command)
    samples: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(args.runs):
        for label, command in commands.items():
            samples[label].append(run_once(command))

    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# {platform.node()} {python}, {os.cpu_count()} CPUs")
    baseline = statistics.median(samples["python -c pass (baseline)"])
    for label, values in samples.items():
        median = statistics.median(values)
        extra = "" if label.startswith("python -c") else f"   (+{median - baseline:6.1f} ms over baseline)"
        print(f"{label:<28} median {median:7.1f} ms   min {min(values):7.1f}   max {max(values):7.1f}{extra}")
    print("\nslowest imports of --help (cumulative us, self us):")
    for self_us, cumulative_us, name in slowest_imports(args.top):
        print(f"  {cumulative_us:8d} {self_us:8d}  {name}")
    measured = statistics.median(samples["slurm-vc --help" if script else "python -m slurm_vc --help"])
    verdict = "meets" if measured < GOAL_MS else "MISSES"
    print(f"\n{verdict} the goal of < {GOAL_MS:.0f} ms ({measured:.1f} ms)")
    return 0 if measured < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
