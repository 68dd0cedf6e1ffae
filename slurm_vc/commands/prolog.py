"""``slurm-vc prolog``: the Slurm Prolog.  Starts this node's guest and publishes it to the job.

Runs as root on every node of the job (``PrologFlags=Alloc,DeferBatch``), with no PATH.  Does
nothing for jobs without ``--vcluster`` (no ``SPANK_VCLUSTER``).

Failure classification (docs/admin.md, "Failures"):

- a **user fault** (bad request, does not fit the allocation, image unusable, guest never ready):
  the prolog exits 0 so Slurm does not drain the node; the reason is published on this node and put
  into the job's Comment, and the TaskProlog fails the job with it (in the job's output);
- a **node fault** (libvirt/QEMU, hugepages, bridge, site config, Slurm unreachable): the prolog
  exits non-zero, so Slurm drains the node ("Prolog error") and requeues the job held; the reason is
  in the job's Comment and on stderr (slurmd's log).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

COMMENT_LIMIT = 500  # characters of reason put into the job's Comment


def comment_prefix(restart_count: int) -> str:
    """The job Comment prefix of a prolog failure in run ``restart_count`` of the job.

    The run number keeps a requeued job (after a node fault) from failing on the old reason.
    """
    return f"slurm-vc[{restart_count}]:"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    import os

    from ..slurm import job_facts_from_env

    if not os.environ.get("SPANK_VCLUSTER"):
        return 0  # not a --vcluster job
    signal.signal(signal.SIGTERM, _terminated)
    return prolog(job_facts_from_env(), args.config)


def _terminated(signum, frame) -> None:
    """SIGTERM (an admin, or Slurm at PrologEpilogTimeout): unwind, undoing what was made, with a reason.

    Slurm itself follows its SIGTERM with SIGKILL 10 ms later, which this cannot outrun; then the
    job's state (each resource recorded before it is made) lets the epilog or gc undo the rest.
    """
    from ..errors import HostError

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise HostError(
        "the prolog was terminated (SIGTERM) before the guest was ready: PrologEpilogTimeout in "
        "slurm.conf must be longer than timeouts.ready in the site config"
    )


def _vcpus_per_node(facts, request, topology, local_vcpus: int) -> dict[str, int]:
    """Hostfile slots per guest: the request's vcpus, else one per core of each node's CPUs.

    Only this node's plan is known here; other nodes are estimated from Slurm's CPU counts with
    this node's threads per core (the same on a homogeneous partition).
    """
    if request.vcpus:
        return {node: request.vcpus for node in facts.nodes}
    threads = max(1, topology.threads_per_core)
    slots = {node: max(1, facts.cpus_per_node.get(node, threads) // threads) for node in facts.nodes}
    slots[facts.node] = local_vcpus
    return slots


def prolog(facts, config_path=None) -> int:
    """Start and publish this node's guest; classify failures.  Returns the prolog's exit code."""
    from .. import jobenv
    from ..config import load_config
    from ..errors import ConfigError, VcError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"slurm-vc prolog: job {facts.job_id}: node fault: {exc}", file=sys.stderr)
        _comment(facts, f"{comment_prefix(facts.restart_count)} node {facts.node}: {exc}")
        _drain(facts.node, f"slurm-vc: {exc}")
        return exc.exit_code
    view = jobenv.JobView(
        job_id=facts.job_id, node=facts.node, user=facts.user, image="", login_user="root", guests=[]
    )
    try:
        return _start(facts, config, view)
    except VcError as exc:
        return _fail(facts, config, view, exc)
    except Exception as exc:  # a bug is the node's problem, not the user's: drain, with the reason
        return _fail(facts, config, view, VcError(f"internal error: {type(exc).__name__}: {exc}"))


def _start(facts, config, view) -> int:
    from .. import jobenv, lifecycle, network, slurm
    from ..errors import PlacementError
    from ..jobkey import job_key_from_file
    from ..request import parse_request
    from ..topology import read_topology

    request = parse_request(facts.vcluster, config)
    image = config.images[request.image]
    view.image, view.login_user = request.image, image.login_user
    allocation = slurm.allocated_cpus_and_memory(facts.job_id, facts.node)
    topology = read_topology("/")
    cpus = slurm.abstract_to_os_cpus(allocation.cpu_ids, topology)
    memory = allocation.memory or request.memory
    if not memory:
        raise PlacementError(
            "Slurm does not track memory on this cluster, so the guest size is unknown: "
            "submit with --mem=SIZE or give mem=SIZE in --vcluster"
        )
    key = job_key_from_file(config.job_key_secret, facts.job_id)
    # Publish the table first, so `slurm-vc status` shows "starting" while the guest boots.
    estimate = len({topology.core_key(cpu) for cpu in cpus if cpu in topology.cpus}) or len(cpus)
    net = network.job_network(
        facts.job_id, facts.nodes, config.network, _vcpus_per_node(facts, request, topology, estimate)
    )
    view.guests = jobenv.guest_entries(net.guests)
    view.local = jobenv.LocalState(state=jobenv.STARTING, started_at=jobenv.now())
    jobenv.publish(config.state_dir, view, facts.uid, facts.gid, key.private_openssh, key.public_openssh)

    job = lifecycle.NodeJob(
        job_id=facts.job_id,
        node=facts.node,
        nodes=tuple(facts.nodes),
        cpus=cpus,
        memory=memory,
        vcluster=facts.vcluster,
        user=facts.user,
        uid=facts.uid,
        gid=facts.gid,
        ssh_public_keys=(key.public_openssh,),
    )
    info = lifecycle.run_prolog(job, config)
    _share_console(info.console_log, facts.uid)
    view.local.state = jobenv.READY
    view.local.ready_at = jobenv.now()  # wall clock: seconds_to_ready then covers the whole prolog
    view.local.console_log = info.console_log
    jobenv.publish(config.state_dir, view, facts.uid, facts.gid)
    return 0


def _share_console(path: str, uid: int) -> None:
    """Let the job's user read its guest's console log (``slurm-vc console``)."""
    try:
        os.chown(path, uid, -1)
        os.chmod(path, 0o600)
    except OSError:
        pass  # the log appears only once QEMU wrote to it; console then says so


def _fail(facts, config, view, exc) -> int:
    from .. import jobenv

    fault = "user" if exc.user_fault else "node"
    reason = f"{comment_prefix(facts.restart_count)} node {facts.node}: {exc}"
    print(f"slurm-vc prolog: job {facts.job_id}: {fault} fault: {exc}", file=sys.stderr)
    view.local.state = jobenv.FAILED
    view.local.error = reason
    view.local.fault = fault
    try:
        jobenv.publish(config.state_dir, view, facts.uid, facts.gid)
    except Exception as publish_error:  # publishing is best effort; the Comment still says why
        print(f"slurm-vc prolog: cannot publish the failure: {publish_error}", file=sys.stderr)
    _comment(facts, reason)
    if exc.user_fault:
        return 0  # no drain: the TaskProlog fails the job with the reason
    _drain(facts.node, f"slurm-vc job {facts.job_id}: {exc}")
    return exc.exit_code or 1


def _drain(node: str, reason: str) -> None:
    """Drain with our reason first; Slurm then drains for the non-zero exit (keeping this reason)."""
    from .. import slurm
    from ..errors import SlurmError

    try:
        slurm.drain_node(node, reason)
    except SlurmError as exc:
        print(f"slurm-vc prolog: cannot set the drain reason: {exc}", file=sys.stderr)


def _comment(facts, reason: str) -> None:
    from .. import slurm
    from ..errors import SlurmError

    try:
        slurm.set_job_comment(facts.job_id, reason[:COMMENT_LIMIT])
    except SlurmError as exc:
        print(f"slurm-vc prolog: cannot set the job comment: {exc}", file=sys.stderr)
