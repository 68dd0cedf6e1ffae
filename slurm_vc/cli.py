"""The ``slurm-vc`` entry point: a thin dispatcher.

Each subcommand lives in ``slurm_vc/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``.  Command modules keep heavy imports (lxml, libvirt, pydantic) inside ``run`` so
``slurm-vc --help`` starts fast.  Every :class:`~slurm_vc.errors.VcError` becomes one line on stderr
and its documented exit code; nothing reaches the user as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import NoReturn, Optional

# name -> (module under slurm_vc.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate-request": ("validate_request", "check a --vcluster value against the site catalog"),
    "plan": ("plan", "dry run: print the placement plan for an allocation"),
    "render": ("render", "dry run: print the libvirt domain XML for an allocation"),
    "prolog": ("prolog", "(Slurm Prolog) start this node's guest for the job"),
    "epilog": ("epilog", "(Slurm Epilog) tear down this node's guest for the job"),
    "task-prolog": ("task_prolog", "(Slurm TaskProlog) export VC_* into the job's tasks"),
    "gc": ("gc", "reap guests, overlays and pools of jobs Slurm no longer runs"),
    "hosts": ("hosts", "inside a job: list the guests"),
    "hostfile": ("hostfile", "inside a job: print an MPI/Spark hostfile for the guests"),
    "run": ("run", "inside a job: run a command in the guests"),
    "ssh": ("ssh", "inside a job: open a shell in guest N"),
    "status": ("status", "inside a job: state of each guest"),
    "console": ("console", "inside a job: tail of guest N's console log"),
    "doctor": ("doctor", "check that this node can run virtual clusters"),
    "sandbox": ("sandbox", "a local N-node Slurm cluster for demos and tests"),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="slurm-vc",
        description="Per-job virtual clusters of pinned, hugepage-backed guests for Slurm.",
        epilog="Exit codes: 0 ok, 1 other error, 2 bad usage/request, 3 config, 4 placement, 5 image,"
        " 6 host, 7 hypervisor, 8 guest not ready, 9 Slurm, 10 state, 130 interrupted; run, ssh and"
        " sandbox exec pass on the command's code.  See docs/admin.md.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"slurm-vc {__version__}")
    config_help = "site config file (default: $SLURM_VC_CONFIG or /etc/slurm/vcluster.toml)"
    parser.add_argument("--config", help=config_help)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")  # not "command": run and ssh have one
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"slurm_vc.commands.{module_name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        # --config after the subcommand too; SUPPRESS keeps one given before it when not repeated.
        command_parser.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module)
    return parser


def restore_child_status() -> None:
    """Undo an inherited ``SIGCHLD = SIG_IGN`` (an ignored signal survives exec).

    With it the kernel reaps children itself, and Python's subprocess then reports every exit
    status as 0: a failing nft, qemu-img or ssh would pass for a success.
    """
    import signal

    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return its exit code."""
    from .errors import EXIT_USAGE, VcError

    restore_child_status()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._module.run(args) or 0)
    except VcError as exc:
        print(f"slurm-vc {args.subcommand}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last resort: one line for the user, the trace only on request
        print(f"slurm-vc {args.subcommand}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("SLURM_VC_DEBUG"):
            traceback.print_exc()
        return 1


def exit_fast(code: int) -> NoReturn:
    """Flush stdout/stderr and end the process with ``code``, skipping the interpreter's teardown.

    For the Slurm hooks: after a prolog has loaded lxml, libvirt and pydantic, a normal exit spends
    ~45 ms freeing them while the job waits.  Nothing is lost: every file the commands write is
    closed by then, no thread of theirs is left running, and the one atexit handler (logging's)
    would only flush handlers that write to stderr, flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
