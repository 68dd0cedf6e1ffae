"""``slurm-vc hosts``: inside a --vcluster job, list the guests (hostnames in node order)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-l", "--long", action="store_true", help="index, node, hostname, IP and vCPUs per guest"
    )


def run(args: argparse.Namespace) -> int:
    from ..jobenv import load_current

    view = load_current(config_path=args.config)
    if not args.long:
        for guest in view.guests:
            print(guest.hostname)
        return 0
    print(f"{'INDEX':<6}{'NODE':<16}{'HOSTNAME':<24}{'IP':<16}VCPUS")
    for guest in view.guests:
        print(f"{guest.index:<6}{guest.node:<16}{guest.hostname:<24}{guest.ip:<16}{guest.vcpus}")
    return 0
