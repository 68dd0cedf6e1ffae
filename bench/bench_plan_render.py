#!/usr/bin/env python3
"""Benchmark: placement plan + domain XML for a whole 256-CPU node (goal: median < 20 ms).

On the recorded host tests/fixtures/sysfs/big-256 (8 sockets x 16 cores x 2 threads, 8 NUMA nodes),
a whole-node allocation (CPUs 0-255, 500G) is placed with ``place()`` and rendered with
``render_domain_xml()``, N times after a warm-up; the median and spread are printed.  In the same run:
  - the same on the 2-CPU recorded VM (vm-2core) as a baseline: the fixed cost every job pays;
  - reading the 256-CPU sysfs tree (``read_topology``), which the prolog does once per job;
  - the whole dry run ``slurm-vc render`` as a fresh process (CLI start-up included), for scale.

    .venv/bin/python bench/bench_plan_render.py [--runs 200] [--cli-runs 10]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from slurm_vc.config import config_from_mapping
from slurm_vc.domain import GuestDevices, render_domain_xml
from slurm_vc.plan import place
from slurm_vc.request import parse_request
from slurm_vc.topology import read_topology
from slurm_vc.units import parse_cpulist, parse_size

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "sysfs"
EXAMPLE = REPO / "packaging" / "vcluster.toml.example"
GOAL_MS = 20.0

CONFIG = config_from_mapping(
    {"host": {"domain_type": "kvm"}, "images": {"centos7-hpc": {"disk": "/images/centos7-hpc.qcow2"}}},
    source="bench",
)
GUEST = GuestDevices(
    name="vc1-0",
    overlay_path="/var/lib/slurm-vc/jobs/1/overlay.qcow2",
    seed_path="/var/lib/slurm-vc/jobs/1/seed.img",
    console_log="/var/lib/slurm-vc/jobs/1/console.log",
    mac="52:54:00:00:01:01",
    bridge="vcbr0",
    tap="vc1t0",
    mtu=1500,
    ready_channel_path="/var/lib/slurm-vc/jobs/1/ready",
    agent_channel_path="/var/lib/slurm-vc/jobs/1/agent.sock",
)


def timed(function, runs: int) -> list[float]:
    """Milliseconds per call, one warm-up call discarded."""
    function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def plan_and_render(topology, cpus: list[int], memory: int) -> str:
    request = parse_request("centos7-hpc", CONFIG)
    plan = place(request, CONFIG, topology, cpus, memory)
    return render_domain_xml(plan, CONFIG, CONFIG.images[request.image], GUEST)


def line(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (
        f"{label:<44} median {statistics.median(samples):8.3f} ms   "
        f"min {ordered[0]:8.3f}   p90 {p90:8.3f}   (n={len(samples)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cli-runs", type=int, default=10)
    args = parser.parse_args()

    big = read_topology(str(FIXTURES / "big-256"))
    small = read_topology(str(FIXTURES / "vm-2core"))
    big_cpus, small_cpus = parse_cpulist("0-255"), parse_cpulist("0-1")
    xml = plan_and_render(big, big_cpus, parse_size("500G"))
    print(f"# {platform.node()} {platform.python_implementation()} {platform.python_version()}")
    print(f"# big-256 whole node: {xml.count('<vcpupin')} vCPUs pinned, {len(xml)} bytes of XML")

    big_samples = timed(lambda: plan_and_render(big, big_cpus, parse_size("500G")), args.runs)
    small_samples = timed(lambda: plan_and_render(small, small_cpus, parse_size("22G")), args.runs)
    read_samples = timed(lambda: read_topology(str(FIXTURES / "big-256")), max(args.runs // 4, 10))
    command = [
        sys.executable, "-m", "slurm_vc", "--config", str(EXAMPLE), "render",
        "--topology", str(FIXTURES / "big-256"), "--cpus", "0-255", "--mem", "500G",
        "--vcluster", "centos7-hpc",
    ]  # fmt: skip
    cli_samples = timed(lambda: subprocess.run(command, check=True, capture_output=True), args.cli_runs)

    print(line("plan+render, big-256 whole node", big_samples))
    print(line("plan+render, vm-2core whole node (baseline)", small_samples))
    print(line("read_topology, big-256 sysfs tree", read_samples))
    print(line("`slurm-vc render` process, big-256", cli_samples))
    median = statistics.median(big_samples)
    ratio = median / statistics.median(small_samples)
    verdict = "meets" if median < GOAL_MS else "MISSES"
    print(f"big-256 / vm-2core: {ratio:.1f}x;  {verdict} the goal of < {GOAL_MS:.0f} ms ({median:.2f} ms)")
    return 0 if median < GOAL_MS else 1


if __name__ == "__main__":
    sys.exit(main())
