"""The sandbox's configuration files, rendered from its layout: pure functions, no I/O.

slurm.conf is valid for Slurm 22.05 (Debian 12) and 24.11 (Debian 13): it uses no option removed in
between.  proctrack/linuxproc + task/none need no cgroup setup and leave no cgroup directories behind;
``PrologFlags=Contain`` needs proctrack/cgroup, so the sandbox uses ``Alloc,DeferBatch``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional

from .layout import NODE_CPUS, SLURMD_PORT, SandboxLayout, node_cpu

PROLOG_TIMEOUT = 180  # seconds; slurm.conf PrologEpilogTimeout
READY_TIMEOUT = 150.0  # seconds; the site config's timeouts.ready, below PROLOG_TIMEOUT


@dataclass(frozen=True)
class Hooks:
    """Absolute paths of the Slurm hooks; None leaves the line out of slurm.conf."""

    prolog: Optional[str] = None
    epilog: Optional[str] = None
    task_prolog: Optional[str] = None
    plugstack: Optional[str] = None


def render_slurm_conf(layout: SandboxLayout, nodes: Sequence[str], memory_mb: int, hooks: Hooks) -> str:
    """slurm.conf shared by slurmctld, every slurmd and the client commands."""
    base = layout.base
    lines = [
        f"# Written by `slurm-vc sandbox up` for sandbox {layout.name!r}; rewritten at every up.",
        f"ClusterName={layout.cluster_name}",
        f"SlurmctldHost={layout.ctld_hostname}({layout.host_address})",
        f"SlurmctldPort={layout.ctld_port}",
        f"SlurmdPort={SLURMD_PORT}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # The sandbox's own munged: no dependency on (or interference with) a system munged.
        f"AuthInfo=socket={layout.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={layout.ctld_state}",
        f"SlurmdSpoolDir={base}/nodes/%n/spool",
        f"SlurmctldPidFile={base}/run/slurmctld.pid",
        f"SlurmdPidFile={base}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        f"SlurmdLogFile={layout.log}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0,sched_min_interval=0",
        # The nodes' advertised CPUs/memory are what this file says, not what slurmd measures.
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SlurmdTimeout=30",
        "SlurmctldTimeout=30",
        "MessageTimeout=10",
        "InactiveLimit=0",
        # Slurm's default: a finished job's record (state, exit code, Comment, StdOut) stays for 5 min.
        # At 5 s, a loaded machine that stalled for a few seconds let tests miss a CANCELLED job.
        "MinJobAge=300",
        "KillWait=2",
        # Slurm 24.11 logs an error unless this is at least 5 x MessageTimeout (22.05 does not check).
        "UnkillableStepTimeout=60",
        f"FirstJobId={layout.first_job_id}",
        "PrologFlags=Alloc,DeferBatch",
        # Guests boot under TCG here, slowly on a loaded 2-core machine: the prolog's own readiness
        # timeout (site config timeouts.ready) expires first, so it fails with its own message.
        f"PrologEpilogTimeout={PROLOG_TIMEOUT}",
        # A batch job whose prolog is still starting guests must not be declared missing (default 10 s).
        f"BatchStartTimeout={PROLOG_TIMEOUT + 60}",
    ]
    if hooks.prolog:
        lines.append(f"Prolog={hooks.prolog}")
    if hooks.epilog:
        lines.append(f"Epilog={hooks.epilog}")
    if hooks.task_prolog:
        lines.append(f"TaskProlog={hooks.task_prolog}")
    if hooks.plugstack:
        lines.append(f"PlugStackConfig={hooks.plugstack}")
    # Every node declares the machine's real CPUs 0..NODE_CPUS-1, so the CPU ids Slurm allocates are
    # real host CPU ids a guest can be pinned to; each node lets Slurm allocate only its own one of
    # them (node_cpu: the others are "specialized"), so the nodes' guests spread over the host.
    for index, node in enumerate(nodes, start=1):
        others = ",".join(str(cpu) for cpu in range(NODE_CPUS) if cpu != node_cpu(index))
        lines.append(
            f"NodeName={node} NodeHostname={node} NodeAddr={layout.node_address(index)}"
            f" CPUs={NODE_CPUS} Boards=1 Sockets=1 CoresPerSocket={NODE_CPUS} ThreadsPerCore=1"
            f" CpuSpecList={others} RealMemory={memory_mb} State=UNKNOWN"
        )
    lines.append(f"PartitionName=vc Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def render_cgroup_conf() -> str:
    """A cgroup.conf that keeps slurmd quiet; the sandbox's plugins do not use cgroups."""
    return "# Written by `slurm-vc sandbox up`: the sandbox uses proctrack/linuxproc and task/none.\n"


def render_plugstack_conf(plugin_so: str, args: Sequence[str] = ()) -> str:
    """plugstack.conf with the one slurm-vc SPANK plugin line (``required`` so a broken build shows)."""
    tail = (" " + " ".join(args)) if args else ""
    return f"required {plugin_so}{tail}\n"


def render_hook_wrapper(layout: SandboxLayout, path_dirs: Sequence[str], target: Sequence[str]) -> str:
    """A /bin/sh wrapper for Prolog/Epilog/TaskProlog.

    slurm.conf is shared by every node, but each node needs its own site config (its own libvirtd
    socket and state dir), and Slurm runs the hooks with no PATH.  The wrapper picks
    ``etc/vcluster-$SLURMD_NODENAME.toml``, sets SLURM_CONF, appends ``path_dirs`` to PATH (the
    prolog gets none), then execs ``target``.
    """
    conf_dir = shlex.quote(str(layout.etc))
    extra_path = ":".join(path_dirs)
    return (
        "#!/bin/sh\n"
        f"# Written by `slurm-vc sandbox up` for sandbox {layout.name!r}.\n"
        f'SLURM_VC_CONFIG={conf_dir}/"vcluster-${{SLURMD_NODENAME:?SLURMD_NODENAME not set}}.toml"\n'
        f"SLURM_CONF={shlex.quote(str(layout.slurm_conf))}\n"
        # Append, never replace: the task wrapper runs the user's command with the user's PATH.
        f'PATH="${{PATH:+$PATH:}}"{shlex.quote(extra_path)}\n'
        "export SLURM_VC_CONFIG SLURM_CONF PATH\n"
        f'exec {" ".join(shlex.quote(part) for part in target)} "$@"\n'
    )


def render_launcher(python: str, pythonpath: Sequence[str] = ()) -> str:
    """``bin/slurm-vc``: run slurm_vc with ``python`` (``pythonpath`` entries first on its path).

    Isolated (``-I``), as the installed ``slurm-vc`` and the hook scripts: a job's PYTHONPATH or
    PYTHONHOME (module systems set them) and a json.py in its working directory must not reach it.
    """
    lines = ["#!/bin/sh", "# Written by `slurm-vc sandbox up`: slurm-vc for every user of the sandbox."]
    code = (
        f"import runpy, sys; sys.path[:0] = {list(pythonpath)!r}; "
        'runpy.run_module("slurm_vc", run_name="__main__", alter_sys=True)'
    )
    lines.append(f'exec {shlex.quote(python)} -I -c {shlex.quote(code)} "$@"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class SiteOptions:
    """What differs between the sandbox's site configs and the defaults."""

    images: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    guest_mtu: int = 1500
    hugepage_size: str = "2M"


def site_config_mapping(layout: SandboxLayout, node: Optional[str], options: SiteOptions) -> dict:
    """The site config of ``node`` (or of the login side when ``node`` is None) as a TOML-ready dict."""
    if node is None:
        state_dir = str(layout.base / "login" / "state")
        runtime_dir = str(layout.node_runtime_dir("login"))
        uri = "qemu:///system"  # never used on the login side: only the validator reads this file
        log_dir = "/var/log/libvirt/qemu"
    else:
        state_dir = str(layout.node_state_dir(node))
        runtime_dir = str(layout.node_runtime_dir(node))  # its own ledgers, though the kernel is shared
        uri = layout.libvirt_uri(node)
        log_dir = str(layout.libvirt_log_dir(node))
    return {
        "state_dir": state_dir,
        "runtime_dir": runtime_dir,
        "host": {
            "libvirt_uri": uri,
            "libvirt_log_dir": log_dir,
            "domain_type": "qemu",  # this machine's /dev/kvm cannot boot stock kernels: TCG
            "hugepage_size": options.hugepage_size,
            "lock_memory": False,  # root lacks CAP_SYS_RESOURCE here
            "reserved_memory": "256M",
        },
        "timeouts": {"ready": READY_TIMEOUT},
        "network": {
            "bridge": layout.guest_bridge,
            "mtu": options.guest_mtu,
            "subnet": layout.guest_subnet,
        },
        "images": {name: dict(spec) for name, spec in options.images.items()},
    }


def to_toml(data: Mapping[str, object]) -> str:
    """A tiny TOML writer for the site config's shapes: scalars, lists, and nested tables."""
    lines: list[str] = []
    _emit_table(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_scalar(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _key(key: str) -> str:
    return key if key.replace("-", "").replace("_", "").isalnum() else json.dumps(key)


def _emit_table(lines: list[str], path: list[str], table: Mapping[str, object]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) or _inline(path, k)}
    tables = {k: v for k, v in table.items() if k not in scalars}
    if path:
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path) + "]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_scalar(value)}")
    for key, value in tables.items():
        assert isinstance(value, Mapping)
        _emit_table(lines, [*path, key], value)


def _inline(path: list[str], key: str) -> bool:
    # Small leaf tables (an image's readiness) read better inline.
    return key == "readiness"
