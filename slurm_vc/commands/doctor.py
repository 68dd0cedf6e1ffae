"""``slurm-vc doctor``: a pass/fail table of what this node needs to run virtual clusters."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--slurm-conf",
        default=None,
        help="slurm.conf to check (default: $SLURM_CONF, else /etc/slurm/slurm.conf)",
    )


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..doctor import FAIL, HostPaths, format_table, run_checks
    from ..errors import EXIT_HOST

    config = load_config(args.config)
    paths = HostPaths(slurm_conf=args.slurm_conf)
    checks = run_checks(config, paths)
    print(format_table(checks))
    return EXIT_HOST if any(check.status == FAIL for check in checks) else 0
