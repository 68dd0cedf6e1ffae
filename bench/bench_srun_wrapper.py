"""What running srun tasks inside the guests costs, measured through the real srun on a sandbox.

Three variants of ``srun -N<nodes> true``, timed in the same run (medians of --repeat):

- ``plain``:  a job without --vcluster (the TaskProlog script exits at once: the baseline);
- ``host``:   a --vcluster job, step with --vcluster-host (adds the Python TaskProlog: VC_* exports);
- ``guest``:  a --vcluster job, step wrapped into the guests (adds slurm-vc-exec + ssh into the guest).

Usage (as root, a sandbox up):  .venv/bin/python bench/bench_srun_wrapper.py --sandbox vcsbx [--repeat 9]
Prints one line per variant (median seconds, ratio to plain) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

LOOP = r"""
for i in $(seq {repeat}); do
  s=$(date +%s.%N); srun -N{nodes} {flags} true; e=$(date +%s.%N)
  echo "T {name} $s $e"
done
"""


def run_job(sandbox, args: list[str], script: str, timeout: float = 900) -> str:
    """Submit as root (the bench measures Slurm and the guests, not the job user's Python) and wait."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        path = Path(tmp) / "bench.sh"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        out = Path(tmp) / "out"
        submitted = sandbox.exec_argv(
            ["sbatch", "--parsable", "-o", str(out), *args, str(path)], user="root", capture=True, timeout=60
        )
        if submitted.returncode != 0:
            sys.exit(f"sbatch failed: {submitted.stderr}")
        job = submitted.stdout.strip().split(";")[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = sandbox.exec_argv(["squeue", "-h", "-j", job, "-o", "%T"], user="root", capture=True)
            if not state.stdout.strip():
                break
            time.sleep(1)
        return out.read_text() if out.exists() else ""


def medians(text: str) -> dict[str, float]:
    times: dict[str, list[float]] = {}
    for name, start, end in re.findall(r"^T (\w+) ([\d.]+) ([\d.]+)$", text, flags=re.MULTILINE):
        times.setdefault(name, []).append(float(end) - float(start))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandbox", default="vcsbx")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--image", default="tiny")
    args = parser.parse_args()
    from slurm_vc.sandbox.cluster import Sandbox

    sandbox = Sandbox(args.sandbox, quiet=True)
    if not sandbox.is_up():
        sys.exit(f"sandbox {args.sandbox} is not up: slurm-vc sandbox up --name {args.sandbox}")
    common = [f"-N{args.nodes}", "--mem=600M", "-t", "15"]
    plain = LOOP.format(repeat=args.repeat, nodes=args.nodes, flags="", name="plain")
    vc = LOOP.format(
        repeat=args.repeat, nodes=args.nodes, flags="--vcluster-host", name="host"
    ) + LOOP.format(repeat=args.repeat, nodes=args.nodes, flags="", name="guest")
    results = medians(run_job(sandbox, common, plain))
    results.update(medians(run_job(sandbox, [*common, f"--vcluster={args.image}"], vc)))
    missing = {"plain", "host", "guest"} - set(results)
    if missing:
        sys.exit(f"no timings for {sorted(missing)} (did the jobs fail?)")
    base = results["plain"]
    for name in ("plain", "host", "guest"):
        ratio = results[name] / base
        print(f"srun -N{args.nodes} true  {name:<6} median {results[name]:.3f} s  ({ratio:.2f}x plain)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
