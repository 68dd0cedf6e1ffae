"""``slurm-vc validate-request VALUE``: the submit-time check the SPANK plugin runs on login nodes."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("value", help="the --vcluster value")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..request import parse_request

    request = parse_request(args.value, load_config(args.config))
    if not args.quiet:
        print(request.to_spec())
    return 0
