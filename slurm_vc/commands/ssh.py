"""``slurm-vc ssh N [CMD...]``: inside a --vcluster job, a shell (or CMD) in guest N."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("guest", help="guest index, hostname or Slurm node name")
    command = parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="optional command (default: a login shell)"
    )
    command.required = False  # argparse counts a REMAINDER as required when it reports missing ones


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from ..guestexec import remote_command, ssh_argv
    from ..jobenv import load_current

    view = load_current(config_path=args.config)
    guest = view.guest(args.guest)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    remote = remote_command(command) if command else None
    argv = ssh_argv(view, guest.ip, remote, tty=remote is None and sys.stdin.isatty())
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 1  # not reached
