"""``slurm-vc console N``: inside a --vcluster job, the tail of guest N's console log.

The log lives on the guest's node; for another node it is read there through an overlapping job
step on the hosts.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", help="guest index, hostname or Slurm node name")
    parser.add_argument("--lines", "-n", type=int, default=40, help="how many lines (default 40)")
    parser.add_argument("--local", action="store_true", help="read this node's log (used internally)")


def tail_lines(path: str, lines: int) -> str:
    """The last ``lines`` lines of a file (reads at most the last 1 MiB)."""
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        handle.seek(max(0, size - (1 << 20)))
        data = handle.read().decode(errors="replace")
    return "\n".join(data.splitlines()[-lines:]) if lines > 0 else ""


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import StateError
    from ..jobenv import load_current

    view = load_current(config_path=args.config)
    guest = view.guest(args.guest)
    if guest.node == view.node:
        path = view.local.console_log
        if not path:
            raise StateError(f"guest {guest.hostname} has no console log yet (state: {view.local.state})")
        try:
            text = tail_lines(path, args.lines)
        except OSError as exc:
            raise StateError(f"cannot read the console log {path}: {exc.strerror}") from None
        if text:
            print(text)
        return 0
    if args.local:
        raise StateError(f"guest {guest.hostname} runs on {guest.node}, not on {view.node}")
    from .. import slurm

    argv = [
        sys.executable,
        "-m",
        "slurm_vc",
        "console",
        "--local",
        "--lines",
        str(args.lines),
        str(guest.index),
    ]
    if args.config:
        argv[3:3] = ["--config", args.config]
    sys.stdout.write(slurm.run_on_job_nodes(view.job_id, [guest.node], argv))
    return 0
