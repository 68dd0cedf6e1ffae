"""``slurm-vc status``: not implemented yet (owner replaces this module)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    raise UsageError("'status' is not implemented yet")
