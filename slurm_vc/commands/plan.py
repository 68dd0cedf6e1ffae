"""``slurm-vc plan``: dry run of the placement for an allocation; needs neither Slurm, libvirt nor images.

    slurm-vc [--config FILE] plan --topology SYSFS_DIR --cpus CPU_IDS --mem SIZE --vcluster VALUE
                                  [--config FILE] [--json | --explain]

SYSFS_DIR is a directory laid out like /sys (``devices/system/{cpu,node}/...``, e.g. one of
tests/fixtures/sysfs/*) or a root that contains ``sys/``; without ``--topology`` the live host is read.

Reuse by ``slurm-vc render``: call :func:`add_allocation_arguments` in its ``add_arguments`` and
:func:`plan_from_args` in its ``run``; both commands then take identical arguments.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # heavy imports stay inside run() so ``slurm-vc --help`` starts fast
    from ..config import SiteConfig
    from ..plan import Plan
    from ..request import VClusterRequest
    from ..topology import HostTopology


def add_allocation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --topology, --cpus, --mem, --vcluster and a sub-level --config to ``parser``.

    ``--config`` given after the subcommand overrides the global one (``slurm-vc --config F plan``);
    when absent here it leaves the global value untouched (default SUPPRESS).
    """
    parser.add_argument(
        "--topology",
        metavar="SYSFS_DIR",
        default="/",
        help="a directory laid out like /sys (devices/system/cpu, devices/system/node), "
        "or a root containing sys/ (default: the live host)",
    )
    parser.add_argument(
        "--cpus", metavar="CPU_IDS", required=True, help="the job's CPU ids on this node, e.g. 0-11,24-35"
    )
    parser.add_argument(
        "--mem", metavar="SIZE", required=True, help="the job's memory on this node, e.g. 64G (no unit = MiB)"
    )
    parser.add_argument(
        "--vcluster",
        metavar="VALUE",
        required=True,
        help="the request, IMAGE[,vcpus=N][,mem=SIZE][,pages=2M|1G|none]",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_allocation_arguments(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the plan as JSON")
    output.add_argument(
        "--explain", action="store_true", help="describe the plan and its reasons for a human"
    )


def plan_from_args(args: argparse.Namespace) -> tuple[SiteConfig, VClusterRequest, HostTopology, Plan]:
    """Load the config, parse the request, read the topology and place: the shared core of plan/render.

    Uses ``args.config``, ``args.topology``, ``args.cpus``, ``args.mem`` and ``args.vcluster`` (as added by
    :func:`add_allocation_arguments`).  Raises UsageError for a bad CPU list, size, missing topology
    directory or CPUs the topology does not have; ConfigError, RequestError, HostError and
    PlacementError pass through with their own exit codes.
    """
    import os

    from ..config import load_config
    from ..errors import UsageError
    from ..plan import place
    from ..request import parse_request
    from ..topology import read_topology
    from ..units import format_cpulist, parse_cpulist, parse_size

    cpus = parse_cpulist(args.cpus, what="--cpus")
    if not cpus:
        raise UsageError("--cpus is empty: give the job's CPU ids on this node, e.g. 0-11")
    memory = parse_size(args.mem, what="--mem")
    if not os.path.isdir(args.topology):
        raise UsageError(f"--topology {args.topology!r} is not a directory (expected one laid out like /sys)")
    config = load_config(getattr(args, "config", None))
    request = parse_request(args.vcluster, config)
    topology = read_topology(args.topology)
    unknown = [cpu for cpu in cpus if cpu not in topology.cpus]
    if unknown:
        raise UsageError(
            f"--cpus {args.cpus}: CPU {format_cpulist(unknown)} not on the host in {args.topology} "
            f"(its online CPUs: {format_cpulist(topology.cpus)})"
        )
    return config, request, topology, place(request, config, topology, cpus, memory)


def run(args: argparse.Namespace) -> int:
    import json

    from ..plan import explain, plan_to_dict, summarize

    _config, request, topology, plan = plan_from_args(args)
    if args.json:
        print(json.dumps({"request": request.to_spec(), **plan_to_dict(plan)}, indent=2))
    elif args.explain:
        print(f"Request: {request.to_spec()}")
        print(explain(plan, topology))
    else:
        print(summarize(plan))
    return 0
