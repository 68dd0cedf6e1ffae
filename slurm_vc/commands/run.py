"""``slurm-vc run [--node N|--all] -- CMD``: inside a --vcluster job, run CMD in the guests.

In parallel, over ssh with the job key, as the image's login user.  Every output line is labelled
``hostname: ``; the exit code is 0 only if CMD succeeded in every guest (otherwise the largest exit
code, 255 when a guest could not be reached).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--node",
        "-n",
        action="append",
        metavar="N",
        help="guest index, hostname or Slurm node name (repeatable)",
    )
    where.add_argument("--all", action="store_true", help="every guest (the default)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import UsageError
    from ..guestexec import run_parallel
    from ..jobenv import load_current

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given: slurm-vc run [--node N|--all] -- CMD [ARGS...]")
    view = load_current(config_path=args.config)
    targets = [view.guest(spec) for spec in args.node] if args.node else list(view.guests)
    codes = run_parallel(view, targets, command)
    failed = {name: code for name, code in codes.items() if code != 0}
    for name, code in failed.items():
        what = "could not be reached (ssh failed)" if code == 255 else f"exit code {code}"
        print(f"slurm-vc run: {name}: {what}", file=sys.stderr)
    return max(failed.values(), default=0)
