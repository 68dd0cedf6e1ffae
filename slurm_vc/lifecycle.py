"""The guest lifecycle on one node: what the prolog and the epilog call.

:func:`start_guest` runs the prolog's steps in order, each recorded in the job's state file
(:mod:`slurm_vc.state`) *before* it is taken::

    parse request -> read topology -> place -> job network
      -> isolation rules      (netdev.apply_isolation)         resource "isolation"
      -> hugepages            (HugepagePool.reserve)           resource "hugepages"
      -> overlay disk         (images.create_overlay)          resource "overlay"
      -> guest seed           (seed.write_seed_iso)            resource "seed"
      -> domain               (Hypervisor.start, tap by libvirt) resource "domain"
      -> wait until ready     (readiness.wait_ready)

:func:`teardown` undoes whatever the state lists, newest first, whether it is marked ``planned`` or
``created``; every undo tolerates a resource that is already gone, so teardown is idempotent and
correct after a crash between any two steps.  A resource is forgotten only after its undo succeeded,
so a teardown that fails half-way (libvirtd down) can simply be run again, by the epilog or by gc.

Everything Slurm-specific stays outside: :class:`NodeJob` holds the facts the lifecycle needs and
``slurm_vc.slurm`` fills it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .config import ImageSpec, SiteConfig
from .errors import ConfigError, HostError, StateError, VcError
from .state import JobState, locked_job

log = logging.getLogger(__name__)

# The order in which start_guest takes its steps (crash hooks are called with these names).
STEPS = ("isolation", "hugepages", "overlay", "seed", "domain", "ready")

CONSOLE_LOG = "console.log"
READY_CHANNEL = "ready.log"
AGENT_SOCKET = "agent.sock"
SEED_ISO = "seed.iso"
UNIX_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), NUL included


@dataclass(frozen=True)
class NodeJob:
    """The facts about a job that this node's prolog needs (filled from Slurm by slurm_vc.slurm)."""

    job_id: int
    node: str  # this node's Slurm name
    nodes: tuple[str, ...]  # the job's node list, in Slurm's order (same on every node)
    cpus: tuple[int, ...]  # the job's CPUs on this node (OS CPU ids)
    memory: int  # the job's memory on this node, bytes
    vcluster: str  # the --vcluster request
    user: str = "root"
    uid: int = 0
    gid: int = 0
    # The job's SSH public key(s) for the guest; empty = derive from config.job_key_secret.
    ssh_public_keys: tuple[str, ...] = ()


@dataclass
class GuestInfo:
    """What :func:`start_guest` reports about the guest it started."""

    name: str
    hostname: str
    ip: str
    job_dir: str
    console_log: str
    seconds_to_ready: float
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Environment:
    """Where the actuators act; the defaults are the real node.  Tests and the sandbox override them."""

    root: str = "/"  # topology root (sysfs fixtures in tests)
    sysfs_root: str = "/sys"  # hugepage pools
    netns: Optional[str] = None  # network namespace of the bridge/taps (None = ours)


CrashHook = Callable[[str], None]


def _hypervisor(config: SiteConfig):
    from .hypervisor import Hypervisor

    return Hypervisor(config.host.libvirt_uri)


def _hugepage_pool(config: SiteConfig, env: Environment):
    from .hugepages import HugepagePool

    return HugepagePool.from_config(config, sysfs_root=env.sysfs_root)


# ------------------------------------------------------------------------------------------ prolog


def start_guest(
    job: NodeJob,
    config: SiteConfig,
    env: Optional[Environment] = None,
    crash_hook: Optional[CrashHook] = None,
) -> GuestInfo:
    """Start this node's guest for ``job`` and wait until it is ready.

    On any failure everything already made is torn down again before the error propagates (the
    epilog would do it too; doing it here frees hugepages and the tap at once).  ``crash_hook(step)``
    is called before each step in :data:`STEPS`; tests use it to kill the process mid-prolog.
    """
    hook = crash_hook or (lambda step: None)
    env = env or Environment()
    with locked_job(config.state_dir, job.job_id, create=True, timeout=config.timeouts.lock) as state:
        assert state is not None
        if state.resources:
            # A re-run prolog (requeue) or leftovers of a crashed one: start from a clean slate.
            log.info("job %s: undoing %d leftover resources first", job.job_id, len(state.resources))
            _undo_all(state, config, env)
        try:
            return _start(job, config, env, state, hook)
        except BaseException as failure:
            try:
                _undo_all(state, config, env)
                state.remove()
            except Exception as undo_failure:  # keep the original error; gc/epilog retry the rest
                # Any kind: an OSError here must not replace a user fault with an "internal error"
                # that drains the node.
                if not isinstance(undo_failure, VcError):
                    undo_failure = VcError(f"{type(undo_failure).__name__}: {undo_failure}")
                if isinstance(failure, VcError):
                    failure.message += f" (and cleaning up failed: {undo_failure}; the epilog or gc retries)"
            raise


def _start(job: NodeJob, config: SiteConfig, env: Environment, state: JobState, hook: CrashHook) -> GuestInfo:
    from . import netdev, network, seed
    from .domain import GuestDevices, render_domain_xml
    from .images import check_boot_files, create_overlay, overlay_path
    from .plan import place
    from .readiness import wait_ready
    from .request import parse_request
    from .topology import read_topology

    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.monotonic()
        timings[step] = round(now - clock, 4)
        clock = now

    request = parse_request(job.vcluster, config)
    image: ImageSpec = config.images[request.image]
    topology = read_topology(env.root)
    plan = place(request, config, topology, job.cpus, job.memory)
    net = network.job_network(job.job_id, job.nodes, config.network, vcpus_per_node=plan.vcpus)
    me = net.guest_on(job.node)
    directory = state.dir
    agent_socket = str(directory / AGENT_SOCKET)
    if len(agent_socket.encode()) >= UNIX_PATH_MAX:
        raise ConfigError(
            f"state_dir {config.state_dir} is too long: the guest agent socket {agent_socket} exceeds the "
            f"{UNIX_PATH_MAX - 1}-byte limit of UNIX socket paths; use a shorter state_dir in {config.source}"
        )
    state.update_meta(
        node=job.node,
        user=job.user,
        uid=job.uid,
        vcluster=job.vcluster,
        image=request.image,
        domain=me.domain_name,
        hostname=me.hostname,
        ip=me.ip,
        libvirt_uri=config.host.libvirt_uri,
        started_at=time.time(),
    )
    lap("plan")

    hook("isolation")
    netdev.check_bridge(config.network.bridge, config.network.mtu, netns=env.netns, source=config.source)
    netdev.check_tap_free(me.tap, netns=env.netns)
    if net.isolation != "none":
        state.plan("isolation", str(job.job_id), netns=env.netns)
        lock = (netdev.isolation_lock_path(config.runtime_dir), config.timeouts.lock)
        netdev.apply_isolation(net, job.node, netns=env.netns, lock=lock)
        state.created("isolation", str(job.job_id))
    lap("isolation")

    hook("hugepages")
    if plan.page_size:
        pages = {str(node): count for node, count in plan.hugepages.items()}
        state.plan("hugepages", str(job.job_id), page_size=plan.page_size, pages=pages, sysfs=env.sysfs_root)
        _hugepage_pool(config, env).reserve(str(job.job_id), plan.page_size, dict(plan.hugepages))
        state.created("hugepages", str(job.job_id))
    lap("hugepages")

    # One libvirt connection from here on: it names QEMU's user for the image check, then starts
    # the guest and watches it come up.
    with _hypervisor(config) as hypervisor:
        hook("overlay")
        check_boot_files(image)  # missing on this node: the user's ImageError, not a libvirt fault
        overlay = None
        if image.disk:
            # QEMU opens the shared base image itself, as libvirt's user: check it can before
            # anything starts, so an image it cannot reach is the image's fault (exit 5), not a
            # libvirt error.  (libvirt builds the host capabilities this reads at their first
            # request after it starts, ~0.9 s once; later calls take milliseconds.)
            qemu = hypervisor.qemu_user(config.host.domain_type)
            overlay = str(overlay_path(directory, me.domain_name))
            state.plan("overlay", overlay, base=image.disk)
            create_overlay(image.disk, directory, me.domain_name, base_format=image.format, qemu=qemu)
            state.created("overlay", overlay)
        lap("overlay")

        hook("seed")
        keys = job.ssh_public_keys or (_job_public_key(config, job.job_id),)
        spec = seed.SeedSpec(
            hostname=me.hostname,
            instance_id=f"slurm-vc-{job.job_id}-{me.index}",
            ip=me.ip,
            prefixlen=net.prefixlen,
            mac=me.mac,
            mtu=net.mtu,
            hosts=[tuple(line.split("\t", 1)) for line in network.hosts_lines(net)],
            arp=network.arp_entries(net, job.node),
            ssh_authorized_keys=keys,
            login_user=image.login_user,
        )
        seed_path = None
        if image.seed in ("cloud-init", "both"):
            seed_path = str(directory / SEED_ISO)
            state.plan("seed", seed_path)
            seed.write_seed_iso(spec, seed_path)
            state.created("seed", seed_path)
        on_cmdline = image.kernel and image.seed in ("cmdline", "both")
        extra_cmdline = seed.kernel_cmdline(spec) if on_cmdline else ""
        lap("seed")

        hook("domain")
        console_log = str(directory / CONSOLE_LOG)
        devices = GuestDevices(
            name=me.domain_name,
            overlay_path=overlay,
            console_log=console_log,
            mac=me.mac,
            bridge=config.network.bridge,
            tap=me.tap,
            mtu=config.network.mtu,
            ready_channel_path=str(directory / READY_CHANNEL),
            agent_channel_path=agent_socket,
            seed_path=seed_path,
            extra_cmdline=extra_cmdline,
        )
        xml = render_domain_xml(plan, config, image, devices)
        try:
            (directory / "domain.xml").write_text(xml)  # for the admin: what was started
        except OSError as exc:
            raise HostError(f"cannot write {directory / 'domain.xml'}: {exc.strerror or exc}") from None
        state.plan("domain", me.domain_name, uri=config.host.libvirt_uri, tap=me.tap, netns=env.netns)
        hypervisor.start(xml)
        state.created("domain", me.domain_name)
        lap("domain")

        hook("ready")
        seconds = wait_ready(
            hypervisor,
            me.domain_name,
            image.readiness,
            config.timeouts.ready,
            ready_channel=devices.ready_channel_path,
            console_log=console_log,
            address=me.ip,
            domain_log=str(Path(config.host.libvirt_log_dir) / f"{me.domain_name}.log"),
        )
        lap("ready")
    state.update_meta(ready_at=time.time(), seconds_to_ready=round(seconds, 3), timings=timings)
    return GuestInfo(
        name=me.domain_name,
        hostname=me.hostname,
        ip=me.ip,
        job_dir=str(directory),
        console_log=console_log,
        seconds_to_ready=seconds,
        timings=timings,
    )


def _job_public_key(config: SiteConfig, job_id: int) -> str:
    from .jobkey import job_key_from_file

    return job_key_from_file(config.job_key_secret, job_id).public_openssh


# ------------------------------------------------------------------------------------------ epilog


def teardown(
    job_id: int | str,
    config: SiteConfig,
    env: Optional[Environment] = None,
    lock_timeout: Optional[float] = None,
) -> bool:
    """Undo everything the job's state lists, then delete the state.  True if there was any state.

    Idempotent: a second run (or a run for a job this node never started) finds nothing and returns
    False.  Raises a VcError when an undo fails (e.g. libvirtd unreachable); what was undone so far
    is forgotten and the rest stays recorded for the next attempt.  Waits up to ``lock_timeout``
    for a prolog holding the job's lock, then raises StateError.  The default outlasts a prolog
    (which holds the lock while it waits for readiness): timeouts.ready + timeouts.lock.
    """
    env = env or Environment()
    if lock_timeout is None:
        timeout = config.timeouts.ready + config.timeouts.lock
    else:
        timeout = lock_timeout
    with locked_job(config.state_dir, job_id, create=False, timeout=timeout) as state:
        if state is None:
            return False
        _undo_all(state, config, env)
        state.remove()
        return True


def _undo_all(state: JobState, config: SiteConfig, env: Environment) -> None:
    for resource in reversed(state.resources):
        _undo(resource.kind, resource.id, resource.details, state, config, env)
        state.forget(resource.kind, resource.id)


def _undo(kind: str, id: str, details: dict, state: JobState, config: SiteConfig, env: Environment) -> None:
    """Undo one resource; must succeed (quietly) when it is already gone."""
    if kind == "domain":
        from .hypervisor import Hypervisor

        with Hypervisor(details.get("uri") or config.host.libvirt_uri) as hypervisor:
            hypervisor.destroy(id)
        tap = details.get("tap")
        if tap:
            from .netdev import delete_link

            # libvirt deletes the tap with the domain; a QEMU that died under a dead libvirtd may not.
            delete_link(tap, netns=details.get("netns", env.netns))
    elif kind == "seed":
        from .seed import remove_seed

        remove_seed(id)
    elif kind == "overlay":
        from .images import remove_overlay

        remove_overlay(id)
    elif kind == "hugepages":
        from .hugepages import HugepagePool

        pool = HugepagePool.from_config(config, sysfs_root=details.get("sysfs", env.sysfs_root))
        pool.release(state.job_id)
    elif kind == "isolation":
        from .netdev import remove_isolation

        remove_isolation(int(id), netns=details.get("netns", env.netns))
    else:
        raise StateError(
            f"job {state.job_id}: unknown resource kind {kind!r} in {state.dir}; remove it by hand"
        )


# ------------------------------------------------------------------------------ prolog/epilog entry


def run_prolog(job: NodeJob, config: SiteConfig, env: Optional[Environment] = None) -> GuestInfo:
    """The prolog's whole job on this node: start the guest and wait until it is ready."""
    return start_guest(job, config, env)


def run_epilog(job_id: int | str, config: SiteConfig, env: Optional[Environment] = None) -> bool:
    """The epilog's whole job on this node: tear the guest down (no error if already gone)."""
    return teardown(job_id, config, env)


def job_dir_of(config: SiteConfig, job_id: int | str) -> Path:
    """The job's directory on this node (overlay, seed, console log, state)."""
    from .state import job_dir

    return job_dir(config.state_dir, job_id)


__all__ = [
    "STEPS",
    "Environment",
    "GuestInfo",
    "NodeJob",
    "job_dir_of",
    "run_epilog",
    "run_prolog",
    "start_guest",
    "teardown",
]
