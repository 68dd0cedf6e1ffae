#!/usr/bin/env python3
"""Benchmark: guest seed creation (render + NoCloud ISO) against genisoimage, in the same run.

For a 2-node and a 256-node job (hosts and ARP tables grow with the job), each round times
  render:       seed.seed_files(spec) only (the four files as text)
  pycdlib:      seed.write_seed_iso(spec, path) (render + ISO in-process + atomic rename)
  genisoimage:  the same four files written to a directory, then
                `genisoimage -output PATH -volid cidata -joliet -rock FILES` (what cloud-localds runs)
The order rotates every round; one warm-up round is discarded.  Prints medians and ratios.

    .venv/bin/python bench/bench_seed.py [--rounds 31] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from slurm_vc import seed
from slurm_vc.seed import SeedSpec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEJGBKnKubujL8ciTxgVmz6FBVh18yOmRlFSIw3O8Gj2 job@slurm-vc"


def job_spec(nodes: int) -> SeedSpec:
    def ip(i: int) -> str:
        return f"10.96.{i // 250}.{i % 250 + 1}"

    def mac(i: int) -> str:
        return f"52:54:00:01:{i // 256:02x}:{i % 256:02x}"

    return SeedSpec(
        hostname="vc1234-0",
        instance_id="slurm-vc-1234-0",
        ip=ip(0),
        prefixlen=16,
        mac=mac(0),
        mtu=9000,
        hosts=[(ip(i), f"vc1234-{i} vc1234-{i}.vc") for i in range(nodes)],
        arp=[(ip(i), mac(i)) for i in range(nodes)],
        ssh_authorized_keys=[KEY],
    )


def time_render(spec: SeedSpec, _: str) -> float:
    start = time.perf_counter()
    seed.seed_files(spec)
    return time.perf_counter() - start


def time_pycdlib(spec: SeedSpec, directory: str) -> float:
    path = os.path.join(directory, "seed.iso")
    start = time.perf_counter()
    seed.write_seed_iso(spec, path)
    elapsed = time.perf_counter() - start
    seed.remove_seed(path)
    return elapsed


def time_genisoimage(spec: SeedSpec, directory: str) -> float:
    path = os.path.join(directory, "seed-g.iso")
    files_dir = os.path.join(directory, "files")
    start = time.perf_counter()
    os.makedirs(files_dir, exist_ok=True)
    names = []
    for name, text in seed.seed_files(spec).items():
        with open(os.path.join(files_dir, name), "w", encoding="utf-8") as handle:
            handle.write(text)
        names.append(os.path.join(files_dir, name))
    subprocess.run(
        ["genisoimage", "-quiet", "-output", path, "-volid", "cidata", "-joliet", "-rock", *names],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    os.unlink(path)
    shutil.rmtree(files_dir)
    return elapsed


VARIANTS = {"render": time_render, "pycdlib": time_pycdlib, "genisoimage": time_genisoimage}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if not shutil.which("genisoimage"):
        print("genisoimage not installed: baseline skipped", file=sys.stderr)
        del variants["genisoimage"]
    directory = tempfile.mkdtemp(prefix="slurm-vc-bench-seed-", dir=args.dir)
    print(f"# {platform.node()} python {platform.python_version()}, {args.rounds} rounds, dir {args.dir}")
    try:
        for nodes in (2, 256):
            spec = job_spec(nodes)
            times: dict[str, list[float]] = {name: [] for name in variants}
            names = list(variants)
            for round_no in range(args.rounds + 1):
                order = names[round_no % len(names) :] + names[: round_no % len(names)]
                for name in order:
                    elapsed = variants[name](spec, directory)
                    if round_no:  # round 0 warms caches and imports
                        times[name].append(elapsed)
            iso_path = seed.write_seed_iso(spec, os.path.join(directory, "size.iso"))
            size = os.path.getsize(iso_path)
            user_data = len(seed.render_user_data(spec))
            print(f"\n{nodes} nodes (user-data {user_data} bytes, ISO {size // 1024} KiB)")
            print(f"{'what':<14} {'median':>10} {'min':>10}")
            for name, values in times.items():
                print(f"{name:<14} {statistics.median(values) * 1e3:8.2f} ms {min(values) * 1e3:8.2f} ms")
            if "genisoimage" in times:
                ratio = statistics.median(times["pycdlib"]) / statistics.median(times["genisoimage"])
                print(f"pycdlib / genisoimage = {ratio:.2f}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
