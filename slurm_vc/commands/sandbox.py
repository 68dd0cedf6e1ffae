"""``slurm-vc sandbox up|status|down|exec``: a real N-node Slurm cluster on this one machine.

    slurm-vc sandbox up --nodes 3          # munge, slurmctld, 3 slurmd in namespaces, 3 libvirtd
    slurm-vc sandbox status [--json]
    slurm-vc sandbox exec -- sbatch -N3 --wrap hostname      # as the job user (vcuser)
    slurm-vc sandbox exec --user root -- scontrol show nodes
    slurm-vc sandbox down

Every subcommand takes ``--name`` (default ``vcsbx``) so several sandboxes can coexist.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..sandbox.layout import DEFAULT_BRIDGE_MTU, DEFAULT_NAME, DEFAULT_ROOT

    sub = parser.add_subparsers(dest="action", metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--name", default=DEFAULT_NAME, help=f"sandbox name, 1-8 of a-z0-9 (default {DEFAULT_NAME})"
        )
        p.add_argument("--root", default=DEFAULT_ROOT, help=f"where sandboxes live (default {DEFAULT_ROOT})")

    up = sub.add_parser("up", help="bring the sandbox up (cleaning any leftovers first)")
    common(up)
    up.add_argument("--nodes", type=int, default=3, help="number of Slurm nodes (default 3)")
    up.add_argument(
        "--mtu", type=int, default=DEFAULT_BRIDGE_MTU, help=f"guest bridge MTU (default {DEFAULT_BRIDGE_MTU})"
    )
    up.add_argument(
        "--guest-mtu", type=int, default=1500, help="network.mtu in the site config (default 1500)"
    )
    up.add_argument(
        "--user", default="vcuser", help="unprivileged job user, created if missing (default vcuser)"
    )
    up.add_argument("--no-libvirt", action="store_true", help="do not start the per-node libvirtd")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the nodes (default 60)")

    status = sub.add_parser("status", help="daemons, node states, bridges, libvirtd sockets")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")

    down = sub.add_parser("down", help="remove every process, namespace, bridge and file of the sandbox")
    common(down)
    down.add_argument("--purge-logs", action="store_true", help="also delete the logs")

    run = sub.add_parser("exec", help="run a command against the sandbox (as the job user by default)")
    common(run)
    run.add_argument("--user", default=None, help="run as this user (default: the sandbox's job user)")
    run.add_argument("--chdir", default=None, help="working directory (default: here if writable, else home)")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..sandbox.cluster import Sandbox

    if not getattr(args, "action", None):
        raise UsageError("give an action: up, status, down or exec (see `slurm-vc sandbox --help`)")
    sandbox = Sandbox(args.name, args.root)
    if args.action == "up":
        sandbox.up(
            nodes=args.nodes,
            bridge_mtu=args.mtu,
            guest_mtu=args.guest_mtu,
            user=args.user,
            libvirt=not args.no_libvirt,
            timeout=args.timeout,
        )
        print(f"export SLURM_CONF={sandbox.layout.slurm_conf}")
        return 0
    if args.action == "down":
        sandbox.down(keep_logs=not args.purge_logs)
        return 0
    if args.action == "status":
        return _print_status(sandbox.status(), args.json)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    return sandbox.exec_argv(argv, user=args.user, cwd=args.chdir).returncode


def _print_status(status: dict, as_json: bool) -> int:
    import json

    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0 if status["up"] else 1
    print(f"sandbox {status['name']}: {'up' if status['up'] else 'DOWN'}  ({status['base']})")
    print(f"  SLURM_CONF={status['slurm_conf']}")
    print(f"  control {status['control_subnet']}  guests {status['guest_subnet']}")
    print("  daemons:")
    for role, info in status["daemons"].items():
        where = f"pid {info['pid']}" if "pid" in info else info.get("socket", "")
        print(f"    {role:<20} {where:<40} {'alive' if info['alive'] else 'DEAD'}")
    print("  nodes:")
    for node, state in status["nodes"].items():
        print(f"    {node:<20} {state}")
    print("  links:")
    for link, info in status["links"].items():
        text = f"mtu {info['mtu']} {info['state']}" if info.get("exists") else "MISSING"
        print(f"    {link:<20} {text}")
    print("  images:")
    for image, info in status["images"].items():
        print(f"    {image:<20} {'ok' if info['present'] else 'MISSING ' + ' '.join(info['files'])}")
    for warning in status["warnings"]:
        print(f"  warning: {warning}")
    return 0 if status["up"] else 1
