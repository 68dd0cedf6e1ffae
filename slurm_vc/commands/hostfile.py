"""``slurm-vc hostfile``: inside a --vcluster job, print a hostfile for the guests (slots = vCPUs)."""

from __future__ import annotations

import argparse

FORMATS = ("openmpi", "mpich", "spark", "plain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="openmpi",
        help="openmpi: 'host slots=N'; mpich: 'host:N'; spark/plain: one host per line (default: openmpi)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ..jobenv import load_current, render_hostfile

    sys.stdout.write(render_hostfile(load_current(config_path=args.config), args.format))
    return 0
