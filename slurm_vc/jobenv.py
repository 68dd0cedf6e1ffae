"""The job-side view of a virtual cluster: what the prolog publishes for the job's own user.

The lifecycle's state (``<state_dir>/jobs/<id>/``) is root's.  What the job may see is published
separately, on every node, by the prolog::

    <state_dir>/jobenv/<job_id>/          owner: the job user, mode 0700
        guests.json                       the whole job's guest table + this node's guest state
        hostfile                          Open MPI format (host slots=N): $VC_HOSTFILE
        hostfile.<format>                 openmpi, mpich, spark, plain
        ssh_config                        Host entries for every guest (ssh -F ...)
        id_ed25519, id_ed25519.pub        the job key ($VC_SSH_KEY), mode 0600

The TaskProlog turns it into ``VC_*`` variables; the launcher commands (``slurm-vc hosts``, ``run``,
``ssh``...) read it through ``$VC_JOB_DIR``.  The epilog removes it (:func:`remove`).

Files are written while the directory still belongs to root and handed to the user only at the end,
so the user can never redirect root's writes through a symlink.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .configfile import CONFIG_ENV
from .errors import StateError, UsageError
from .state import check_job_id, job_ids_in, make_dirs

JOBENV_DIR = "jobenv"
GUESTS_FILE = "guests.json"
KEY_FILE = "id_ed25519"
SSH_CONFIG_FILE = "ssh_config"
HOSTFILE = "hostfile"
VERSION = 1
JOB_DIR_ENV = "VC_JOB_DIR"

# Guest states as the job sees them.
STARTING = "starting"
READY = "ready"
FAILED = "failed"


@dataclass(frozen=True)
class GuestEntry:
    """One guest as the job sees it."""

    index: int
    node: str
    hostname: str
    fqdn: str
    ip: str
    mac: str
    vcpus: int
    domain: str = ""  # libvirt domain name on its node


@dataclass
class LocalState:
    """This node's guest, as the prolog left it."""

    state: str = STARTING  # starting | ready | failed
    started_at: Optional[float] = None  # epoch seconds
    ready_at: Optional[float] = None
    console_log: Optional[str] = None  # path on this node, readable by the job user
    error: Optional[str] = None  # reason shown to the user when state is failed
    fault: Optional[str] = None  # "user" or "node" when failed

    @property
    def seconds_to_ready(self) -> Optional[float]:
        if self.started_at is None or self.ready_at is None:
            return None
        return round(self.ready_at - self.started_at, 3)


@dataclass
class JobView:
    """Everything published for one job on one node."""

    job_id: int
    node: str  # the node this copy was published on
    user: str
    image: str
    login_user: str
    guests: list[GuestEntry]
    local: LocalState = field(default_factory=LocalState)
    directory: Optional[str] = None  # where it was read from

    def guest(self, spec: str) -> GuestEntry:
        """A guest by index (``0``), Slurm node name or hostname.  Raises UsageError."""
        for guest in self.guests:
            if spec in (str(guest.index), guest.node, guest.hostname, guest.fqdn, guest.ip):
                return guest
        names = ", ".join(f"{g.index}={g.hostname}({g.node})" for g in self.guests)
        raise UsageError(f"no guest {spec!r} in job {self.job_id}; guests: {names}")

    @property
    def local_guest(self) -> Optional[GuestEntry]:
        for guest in self.guests:
            if guest.node == self.node:
                return guest
        return None

    @property
    def key_path(self) -> Optional[str]:
        return os.path.join(self.directory, KEY_FILE) if self.directory else None

    @property
    def hostfile_path(self) -> Optional[str]:
        return os.path.join(self.directory, HOSTFILE) if self.directory else None

    def to_dict(self) -> dict:
        return {
            "version": VERSION,
            "job_id": self.job_id,
            "node": self.node,
            "user": self.user,
            "image": self.image,
            "login_user": self.login_user,
            "guests": [asdict(guest) for guest in self.guests],
            "local": asdict(self.local),
        }


# --------------------------------------------------------------------------- pure renderers


def view_from_dict(data: Mapping, directory: Optional[str] = None) -> JobView:
    """Parse a guests.json mapping.  Raises StateError on anything unexpected."""
    if not isinstance(data, Mapping):
        raise StateError(f"published job file is malformed: a JSON {type(data).__name__}, not an object")
    try:
        if data.get("version") != VERSION:
            raise StateError(f"guests.json version {data.get('version')!r}; this slurm-vc reads {VERSION}")
        return JobView(
            job_id=int(data["job_id"]),
            node=str(data["node"]),
            user=str(data.get("user", "")),
            image=str(data.get("image", "")),
            login_user=str(data.get("login_user", "root")),
            guests=[GuestEntry(**guest) for guest in data["guests"]],
            local=LocalState(**data.get("local", {})),
            directory=directory,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StateError(f"published job file is malformed: {type(exc).__name__}: {exc}") from None


def ssh_options(key_path: str, connect_timeout: int = 10) -> list[str]:
    """ssh options for the job's guests: the job key only, no host-key prompts or pollution.

    ``-F /dev/null``: neither the user's ~/.ssh/config (a ``Host *`` ProxyJump or ControlMaster
    would send every task through it) nor the system's ssh_config applies to the guests.
    """
    return [
        "-F",
        "/dev/null",
        "-i",
        key_path,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        f"ConnectTimeout={connect_timeout}",
    ]


def render_ssh_config(view: JobView, key_path: str) -> str:
    """An ssh_config with one Host entry per guest (by hostname, fqdn and index)."""
    lines = [f"# slurm-vc: guests of job {view.job_id}; use: ssh -F {SSH_CONFIG_FILE} <hostname>"]
    for guest in view.guests:
        names = " ".join(dict.fromkeys([guest.hostname, guest.fqdn, guest.ip]))
        lines += [
            f"Host {names}",
            f"    HostName {guest.ip}",
            f"    User {view.login_user}",
            f"    IdentityFile {key_path}",
            "    IdentitiesOnly yes",
            "    StrictHostKeyChecking no",
            "    UserKnownHostsFile /dev/null",
            "    LogLevel ERROR",
        ]
    return "\n".join(lines) + "\n"


def render_hostfile(view: JobView, fmt: str) -> str:
    """Hostfile for the guests, slots = vCPUs, in slurm_vc.network's formats (the single definition)."""
    from types import SimpleNamespace

    from .network import hostfile

    return hostfile(SimpleNamespace(guests=view.guests), fmt)  # type: ignore[arg-type]


# The same tuple as slurm_vc.network.HOSTFILE_FORMATS (a unit test checks); not imported, to keep the
# TaskProlog, which runs for every task, free of the pydantic import that network.py brings.
HOSTFILE_FORMATS = ("openmpi", "mpich", "spark", "plain")


def _shell_quote(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_./:,=@+-]+", value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def task_prolog_lines(view: JobView) -> list[str]:
    """The TaskProlog's stdout: ``export NAME=value`` lines Slurm puts into every task.

    Slurm takes the value verbatim (no shell): values are kept free of spaces by using commas.
    """
    local = view.local_guest
    exports = {
        "VC_JOB_DIR": view.directory or "",
        "VC_HOSTS": ",".join(g.hostname for g in view.guests),
        "VC_IPS": ",".join(g.ip for g in view.guests),
        "VC_NODES": ",".join(g.node for g in view.guests),
        "VC_HOSTFILE": view.hostfile_path or "",
        "VC_SSH_KEY": view.key_path or "",
        "VC_SSH_CONFIG": os.path.join(view.directory, SSH_CONFIG_FILE) if view.directory else "",
        "VC_LOCAL_GUEST": local.hostname if local else "",
        "VC_LOCAL_IP": local.ip if local else "",
        "VC_LOGIN_USER": view.login_user,
        "VC_IMAGE": view.image,
    }
    return [f"export {name}={value}" for name, value in exports.items()]


# --------------------------------------------------------------------------- on disk (root side)


def jobenv_root(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / JOBENV_DIR


def jobenv_dir(state_dir: str | os.PathLike, job_id: int | str) -> Path:
    """Where job ``job_id``'s published files live on this node."""
    check_job_id(job_id)
    return jobenv_root(state_dir) / str(job_id)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def publish(
    state_dir: str | os.PathLike,
    view: JobView,
    uid: int,
    gid: int,
    private_key: Optional[bytes] = None,
    public_key: Optional[str] = None,
) -> Path:
    """Write (or rewrite) the job's published files on this node and hand them to ``uid:gid``.

    Called as root by the prolog.  Safe to call again (e.g. to update the local guest's state).
    A file system error is a StateError (the node's state directory, exit 10).
    """
    try:
        return _publish(state_dir, view, uid, gid, private_key, public_key)
    except OSError as exc:
        where = exc.filename or jobenv_dir(state_dir, view.job_id)
        reason = exc.strerror or exc
        raise StateError(f"cannot publish job {view.job_id}'s files: {where}: {reason}") from None


def _publish(
    state_dir: str | os.PathLike,
    view: JobView,
    uid: int,
    gid: int,
    private_key: Optional[bytes],
    public_key: Optional[str],
) -> Path:
    root = jobenv_root(state_dir)
    make_dirs(root, 0o755)  # the job user reaches their files through it, whatever slurmd's umask
    os.chmod(root, 0o755)
    directory = jobenv_dir(state_dir, view.job_id)
    if directory.is_symlink():
        raise StateError(f"{directory} is a symbolic link; refusing to publish there")
    directory.mkdir(mode=0o700, exist_ok=True)
    # Take the directory back while writing: the user must not race root's writes.
    os.chown(directory, os.geteuid(), os.getegid())
    os.chmod(directory, 0o700)
    view.directory = str(directory)
    files: dict[str, tuple[bytes, int]] = {
        GUESTS_FILE: (json.dumps(view.to_dict(), indent=1, sort_keys=True).encode() + b"\n", 0o644),
        HOSTFILE: (render_hostfile(view, "openmpi").encode(), 0o644),
        SSH_CONFIG_FILE: (render_ssh_config(view, str(directory / KEY_FILE)).encode(), 0o644),
    }
    for fmt in HOSTFILE_FORMATS:
        files[f"{HOSTFILE}.{fmt}"] = (render_hostfile(view, fmt).encode(), 0o644)
    if private_key is not None:
        files[KEY_FILE] = (private_key, 0o600)
    if public_key is not None:
        files[KEY_FILE + ".pub"] = (public_key.encode() + b"\n", 0o644)
    for name, (data, mode) in files.items():
        _write(directory / name, data, mode)
        os.chown(directory / name, uid, gid, follow_symlinks=False)
    os.chown(directory, uid, gid)
    return directory


def remove(state_dir: str | os.PathLike, job_id: int | str) -> bool:
    """Delete the job's published files (key included).  False if there was nothing to delete."""
    directory = jobenv_dir(state_dir, job_id)
    if not directory.exists() and not directory.is_symlink():
        return False
    if directory.is_symlink():
        directory.unlink()
        return True
    shutil.rmtree(directory, ignore_errors=False)
    return True


def published_job_ids(state_dir: str | os.PathLike) -> list[str]:
    """Job ids with published files on this node (for ``slurm-vc gc``)."""
    return job_ids_in(jobenv_root(state_dir))


# --------------------------------------------------------------------------- job side


def load(directory: str | os.PathLike) -> JobView:
    """Read a published job directory.  Raises StateError with a message for the user."""
    path = Path(directory) / GUESTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(
            f"{path} does not exist: this job has no virtual cluster on this node (submitted without "
            "--vcluster, or it was already torn down)"
        ) from None
    except PermissionError:
        raise StateError(f"{path}: permission denied (only the job's user can read it)") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    return view_from_dict(data, directory=str(directory))


def find_job_dir(environ: Optional[Mapping[str, str]] = None, state_dir: Optional[str] = None) -> str:
    """The published directory of the job this process belongs to.

    ``$VC_JOB_DIR`` (set by the TaskProlog) first; otherwise ``<state_dir>/jobenv/$SLURM_JOB_ID``.
    """
    env = os.environ if environ is None else environ
    if env.get(JOB_DIR_ENV):
        return env[JOB_DIR_ENV]
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        raise UsageError(
            "not inside a Slurm job: run this in a job submitted with --vcluster "
            "(VC_JOB_DIR and SLURM_JOB_ID are unset)"
        )
    if state_dir is None:
        state_dir = state_dir_from_file()
    return str(jobenv_dir(state_dir, job_id))


def load_current(environ: Optional[Mapping[str, str]] = None, config_path: Optional[str] = None) -> JobView:
    """The current job's view (for the launcher commands)."""
    env = os.environ if environ is None else environ
    state_dir = None
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not env.get(JOB_DIR_ENV) and job_id:
        state_dir = state_dir_from_file(config_path or env.get(CONFIG_ENV) or None)
    directory = find_job_dir(env, state_dir)
    if (
        not env.get(JOB_DIR_ENV)
        and not env.get("SLURMD_NODENAME")
        and not (Path(directory) / GUESTS_FILE).exists()
    ):
        # A job's environment off its nodes: an salloc shell runs on the submit host, where nothing
        # is published (slurmd sets SLURMD_NODENAME in every step and batch script on a node).
        raise StateError(
            f"job {job_id}'s guest list is published on its nodes, not on this host (an salloc shell runs"
            " here): use srun, whose tasks run in the guests, or `srun -N1 --vcluster-host slurm-vc hosts`"
        )
    return load(directory)


def guest_entries(guests: Sequence) -> list[GuestEntry]:
    """GuestEntry list from slurm_vc.network Guests (or anything with the same attributes)."""
    return [
        GuestEntry(
            index=g.index,
            node=g.node,
            hostname=g.hostname,
            fqdn=g.fqdn,
            ip=g.ip,
            mac=g.mac,
            vcpus=g.vcpus,
            domain=getattr(g, "domain_name", ""),
        )
        for g in guests
    ]


def now() -> float:
    """Epoch seconds (one place, so tests can reason about it)."""
    return time.time()


__all__ = [
    "FAILED",
    "HOSTFILE_FORMATS",
    "JOB_DIR_ENV",
    "READY",
    "STARTING",
    "GuestEntry",
    "JobView",
    "LocalState",
    "find_job_dir",
    "guest_entries",
    "jobenv_dir",
    "load",
    "load_current",
    "publish",
    "published_job_ids",
    "remove",
    "render_hostfile",
    "render_ssh_config",
    "ssh_options",
    "task_prolog_lines",
    "view_from_dict",
]


def state_dir_from_file(path: Optional[str] = None) -> str:
    """Only ``state_dir`` from the site config, without validating the rest.

    The TaskProlog runs for every task of every step: it must stay cheap (no pydantic import).  The
    prolog has validated the same file with the full model already.
    """
    from .configfile import config_path, read_toml
    from .errors import ConfigError

    source = config_path(path)
    default_state_dir = "/var/lib/slurm-vc"  # SiteConfig.state_dir's default
    data = read_toml(source)  # a ConfigError is the admin's (exit 3), not the job state's
    value = data.get("state_dir", default_state_dir)
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{source}: key 'state_dir': must be an absolute path, got {value!r}")
    return value
