"""``slurm-vc render``: dry run that prints the libvirt domain XML for an allocation.

    slurm-vc [--config FILE] render --topology SYSFS_DIR --cpus CPU_IDS --mem SIZE --vcluster VALUE
                                    [--config FILE] [--name NAME] [--job ID] [--validate]

Same inputs as ``slurm-vc plan`` (see :mod:`slurm_vc.commands.plan`); needs neither Slurm, nor libvirt,
nor the image files.  Device paths are placeholders under the config's ``state_dir``
(``<state_dir>/jobs/<job>/...``), the MAC is the site prefix plus ``00:00:01``.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

from .plan import add_allocation_arguments

if TYPE_CHECKING:  # heavy imports stay inside run() so ``slurm-vc --help`` starts fast
    from ..config import ImageSpec, SiteConfig
    from ..domain import GuestDevices

DRY_RUN_JOB = "dryrun"
# Both used with fullmatch: "$" would allow a final "\n" (and put it into the XML and the paths).
_JOB_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# libvirt accepts more, but these names also have to work as file and cgroup names
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_allocation_arguments(parser)
    parser.add_argument("--name", help="domain name (default: the site hostname_format for guest 0)")
    parser.add_argument(
        "--job",
        default=DRY_RUN_JOB,
        help=f"job id used in names and placeholder paths (default: {DRY_RUN_JOB})",
    )
    parser.add_argument(
        "--validate",
        action="store_true",
        help="also check the XML against libvirt's schema (needs virt-xml-validate)",
    )


def placeholder_devices(config: SiteConfig, image: ImageSpec, name: str, job: str) -> GuestDevices:
    """Plausible per-guest paths and names for a dry run: ``<state_dir>/jobs/<job>/<name>.*``."""
    from ..domain import GuestDevices

    job_dir = f"{config.state_dir.rstrip('/')}/jobs/{job}"
    return GuestDevices(
        name=name,
        overlay_path=f"{job_dir}/{name}.qcow2" if image.disk else None,
        seed_path=f"{job_dir}/{name}-seed.img" if image.seed in ("cloud-init", "both") else None,
        console_log=f"{job_dir}/{name}-console.log",
        mac=f"{config.network.mac_prefix}:00:00:01",
        bridge=config.network.bridge,
        tap=f"vc{job}t0"[:15],
        mtu=config.network.mtu,
        ready_channel_path=f"{job_dir}/{name}-ready",
        agent_channel_path=f"{job_dir}/{name}-agent.sock",
    )


def default_name(config: SiteConfig, job: str) -> str:
    """Guest 0's name from the site's ``hostname_format`` (falls back to ``vc<job>-0``)."""
    try:
        return config.network.hostname_format.format(job=job, index=0)
    except (KeyError, IndexError, ValueError):
        return f"vc{job}-0"


def run(args: argparse.Namespace) -> int:
    from ..domain import domain_to_string, render_domain, schema_errors
    from ..errors import UsageError, VcError
    from .plan import plan_from_args

    if not _JOB_RE.fullmatch(args.job):
        raise UsageError(f"--job {args.job!r}: use 1-32 of letters, digits, '_', '.' and '-'")
    if args.name is not None and not _NAME_RE.fullmatch(args.name):
        raise UsageError(
            f"--name {args.name!r}: start with a letter or digit, then up to 63 of"
            " letters, digits, '_', '.', '+', '-'"
        )
    config, request, _topology, plan = plan_from_args(args)
    name = args.name or default_name(config, args.job)
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"domain name {name!r} from hostname_format is not usable; pass --name")
    image = config.images[request.image]
    xml = domain_to_string(
        render_domain(plan, config, image, placeholder_devices(config, image, name, args.job))
    )
    if args.validate:
        try:
            errors = schema_errors(xml)
        except FileNotFoundError:
            raise UsageError(
                "--validate needs virt-xml-validate (apt install libvirt-clients libxml2-utils)"
            ) from None
        if errors:
            # our bug, not the user's: exit 1 like other internal errors
            raise VcError(f"the rendered XML does not validate against libvirt's schema: {errors}")
    print(xml, end="")
    return 0
