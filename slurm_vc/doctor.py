"""Node readiness checks for ``slurm-vc doctor``: each check is a small function returning a Check.

Checks read the host (sysfs, /proc, the Slurm config files, libvirt) but change nothing: ``nft -c``
only checks rules, and the O_DIRECT probe file in state_dir is removed at once.  Roots are
injectable so tests can point them at recorded trees.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .config import SiteConfig

if TYPE_CHECKING:
    from .qemu_access import QemuUser

PASS, WARN, FAIL = "pass", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    status: str  # PASS, WARN or FAIL
    detail: str
    fix: str = ""


DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"


@dataclass(frozen=True)
class HostPaths:
    """Where the host's facts are read from (injectable for tests)."""

    proc: str = "/proc"
    sys: str = "/sys"
    dev_kvm: str = "/dev/kvm"
    slurm_conf: Optional[str] = None  # None: $SLURM_CONF, else DEFAULT_SLURM_CONF
    slurm_configless: str = "/run/slurm/conf"  # slurmd's copies of the config files, when configless
    qemu_conf: str = "/etc/libvirt/qemu.conf"


def check_virtualisation(config: SiteConfig, paths: HostPaths) -> Check:
    """Is hardware virtualisation usable, and is /dev/kvm a nested/paravirtual one (kvm-pvm)?"""
    name = "hardware virtualisation"
    cpuinfo = _read(os.path.join(paths.proc, "cpuinfo")) or ""
    flags = set(re.findall(r"\b(vmx|svm)\b", cpuinfo))
    pvm = os.path.isdir(os.path.join(paths.sys, "module", "kvm_pvm"))
    has_kvm = os.path.exists(paths.dev_kvm)
    if config.host.domain_type == "qemu":
        detail = "domain_type = 'qemu' (TCG emulation, slow); "
        detail += "/dev/kvm present" if has_kvm else "/dev/kvm absent"
        return Check(name, WARN, detail, "set host.domain_type = 'kvm' on hosts with VT-x/AMD-V")
    if not has_kvm:
        return Check(
            name, FAIL, f"{paths.dev_kvm} does not exist", "load kvm_intel/kvm_amd and enable VT-x/AMD-V"
        )
    if pvm and not flags:
        return Check(
            name,
            FAIL,
            "/dev/kvm is kvm-pvm (pagetable-based nested virtualisation): stock guest kernels hang under it",
            "use a host with VT-x/AMD-V, or set host.domain_type = 'qemu' (TCG) for tests",
        )
    if not flags:
        return Check(
            name, WARN, "/dev/kvm exists but the CPU shows no vmx/svm flag (nested?)", "check guests boot"
        )
    return Check(name, PASS, f"/dev/kvm present, CPU flag {'/'.join(sorted(flags))}")


def _qemu_user(paths: HostPaths) -> str:
    """The user libvirt runs QEMU as: qemu.conf's ``user``, else Debian's default ``libvirt-qemu``."""
    text = _read(paths.qemu_conf) or ""
    found = re.findall(r'^\s*user\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found[-1] if found else "libvirt-qemu"


@functools.lru_cache(maxsize=8)
def _libvirt_qemu_user(uri: str, domain_type: str) -> Optional[QemuUser]:
    """Who libvirt at ``uri`` runs QEMU as for ``domain_type`` (its DAC base label, as the prolog
    asks it), None when libvirt cannot be asked or reports none.  Cached: several checks ask, and
    each answer costs a connection; :func:`run_checks` clears the cache so each run asks once."""
    from .qemu_access import dac_label, qemu_user

    try:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        conn = libvirt.open(uri)
        try:
            label = dac_label(conn.getCapabilities(), domain_type)
        finally:
            conn.close()
    except Exception:  # no bindings, no daemon: the caller falls back to the configuration file
        return None
    return qemu_user(*label) if label else None


def _qemu_identity(config: SiteConfig, paths: HostPaths) -> QemuUser:
    """Who QEMU runs as: libvirt's answer; qemu.conf's ``user`` when libvirtd cannot be asked; else
    any unprivileged user ("other" bits)."""
    from .qemu_access import UNPRIVILEGED, user_named

    asked = _libvirt_qemu_user(config.host.libvirt_uri, config.host.domain_type)
    return asked or user_named(_qemu_user(paths)) or UNPRIVILEGED


def check_kvm_access(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """Can libvirt's QEMU user open /dev/kvm read-write?

    Without it KVM guests cannot start; and even for TCG guests libvirt 9-11 then treats its cached
    QEMU capabilities as outdated at every guest start ("KVM was enabled when probing, but it is not
    available now") and probes QEMU again, several times: seconds per start instead of ~0.3 s.  Seen
    when a package of another distribution (a chroot sharing /dev) re-owned /dev/kvm to its own
    kvm group id.
    """
    import grp

    from .qemu_access import READ, WRITE, permits, user_named

    if not os.path.exists(paths.dev_kvm):
        return []  # check_virtualisation reports it
    name = "/dev/kvm access"
    qemu = _libvirt_qemu_user(config.host.libvirt_uri, config.host.domain_type)
    if qemu is None:  # libvirtd not reachable: what qemu.conf says it will use
        configured = _qemu_user(paths)
        qemu = user_named(configured)
        if qemu is None:
            return [Check(name, WARN, f"libvirt's QEMU user {configured!r} (qemu.conf) does not exist", "")]
    user = qemu.name
    info = os.stat(paths.dev_kvm)
    try:
        owner_group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        owner_group = str(info.st_gid)  # a group id this host does not know: the usual culprit
    shown = f"{paths.dev_kvm} (group {owner_group}, mode {info.st_mode & 0o777:04o})"
    if permits(Path(paths.dev_kvm), qemu, READ | WRITE):
        return [Check(name, PASS, f"{shown} is read-write for libvirt's QEMU user {user}")]
    impact = (
        "KVM guests cannot start"
        if config.host.domain_type == "kvm"
        else "libvirt re-probes QEMU at every guest start (seconds each)"
    )
    return [
        Check(
            name,
            FAIL if config.host.domain_type == "kvm" else WARN,
            f"{shown} is not read-write for libvirt's QEMU user {user}: {impact}",
            f'chgrp kvm {paths.dev_kvm} && chmod 0660 {paths.dev_kvm} (udev: KERNEL=="kvm",'
            f' GROUP="kvm", MODE="0660"), with {user} in group kvm',
        )
    ]


def _hugetlbfs_mounts(paths: HostPaths) -> dict[str, str]:
    """page size text ('2M', '1G') -> mount point, from /proc/mounts."""
    mounts: dict[str, str] = {}
    for line in (_read(os.path.join(paths.proc, "mounts")) or "").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "hugetlbfs":
            match = re.search(r"pagesize=(\d+[KMG])", fields[3])
            mounts[match.group(1) if match else "2M"] = fields[1]
    return mounts


def check_hugepages(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """hugetlbfs mounted for the configured page size, and pool headroom per NUMA node."""
    size = config.host.hugepage_size
    if size == "none":
        return [Check("hugepages", PASS, "hugepage_size = 'none': guests use normal pages")]
    checks = []
    mounts = _hugetlbfs_mounts(paths)
    if size in mounts:
        checks.append(Check(f"hugetlbfs {size}", PASS, f"mounted at {mounts[size]}"))
    else:
        checks.append(
            Check(
                f"hugetlbfs {size}",
                FAIL,
                f"no hugetlbfs mount with pagesize={size}",
                f"mount -t hugetlbfs -o pagesize={size} none /dev/hugepages{'1G' if size == '1G' else ''}"
                " before libvirtd starts, then restart libvirtd",
            )
        )
    kib = 2048 if size == "2M" else 1048576
    node_root = Path(paths.sys, "devices", "system", "node")
    if not node_root.is_dir():
        # The plan reads the global pools, but the prolog grows per-NUMA-node pools.
        checks.append(
            Check(
                "hugepage pools",
                FAIL,
                f"{node_root} is missing: the kernel has no per-NUMA-node hugepage pools to grow",
                "use a kernel with CONFIG_NUMA, or set host.hugepage_size = 'none'",
            )
        )
    for node_dir in sorted(node_root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        pool = node_dir / "hugepages" / f"hugepages-{kib}kB"
        if not pool.is_dir():
            checks.append(
                Check(
                    f"pool {node_dir.name} {size}",
                    FAIL,
                    "kernel has no pool of this size",
                    "use hugepage_size 2M",
                )
            )
            continue
        free_kib = _meminfo_free_kib(node_dir / "meminfo")
        headroom = free_kib // kib if free_kib is not None else None
        total = (_read(pool / "nr_hugepages") or "?").strip()
        free = (_read(pool / "free_hugepages") or "?").strip()
        detail = f"{total} pages, {free} free"
        if headroom is not None:
            detail += f"; room for about {headroom} more"
        if not os.access(pool / "nr_hugepages", os.W_OK):
            checks.append(
                Check(
                    f"pool {node_dir.name} {size}",
                    FAIL,
                    f"{detail}; {pool / 'nr_hugepages'} is not writable: the prolog grows this pool",
                    "run doctor and slurmd as root, with /sys mounted read-write",
                )
            )
            continue
        status = PASS if headroom is None or headroom > 0 else WARN
        checks.append(
            Check(f"pool {node_dir.name} {size}", status, detail, "" if status == PASS else "free memory")
        )
    return checks


def _meminfo_free_kib(path: Path) -> Optional[int]:
    match = re.search(r"MemFree:\s+(\d+) kB", _read(path) or "")
    return int(match.group(1)) if match else None


def check_topology(config: SiteConfig, paths: HostPaths) -> Check:
    """The host topology reads as the prolog reads it (every placement starts from it)."""
    from .errors import VcError
    from .topology import read_topology

    try:
        topology = read_topology(paths.sys)  # a sysfs root: the prolog's "/" reads the same sys/
    except VcError as exc:
        return Check("host topology", FAIL, str(exc), "the prolog reads the same files: fix sysfs access")
    cores = topology.cores()
    return Check(
        "host topology",
        PASS,
        f"{len(topology.sockets)} socket(s), {len(topology.nodes)} NUMA node(s), {len(cores)} cores,"
        f" {len(topology.cpus)} CPUs",
    )


def check_libvirt(config: SiteConfig, paths: HostPaths) -> Check:
    """Can we reach libvirtd at the configured URI?"""
    try:
        import libvirt
    except ImportError:
        return Check("libvirtd", FAIL, "libvirt-python is not installed", "pip install libvirt-python")
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(config.host.libvirt_uri)
    except libvirt.libvirtError as exc:
        return Check(
            "libvirtd",
            FAIL,
            f"cannot connect to {config.host.libvirt_uri}: {exc.get_error_message()}",
            "start libvirtd (after mounting hugetlbfs) or fix host.libvirt_uri",
        )
    host = config.host
    what = f"{host.domain_type} guests" + (f" with {host.emulator}" if host.emulator else "")
    try:
        version = conn.getLibVersion()
        # What the prolog's createXML needs: an emulator for this domain type (and the CPU model).
        capabilities = conn.getDomainCapabilities(host.emulator, None, None, host.domain_type)
    except libvirt.libvirtError as exc:
        return Check(
            "libvirtd",
            FAIL,
            f"{host.libvirt_uri} cannot run {what}: {exc.get_error_message()}",
            "install QEMU (qemu-system-x86), or fix host.emulator / host.domain_type",
        )
    finally:
        conn.close()
    major, minor = version // 1000000, (version // 1000) % 1000
    detail = f"{host.libvirt_uri} reachable (libvirt {major}.{minor}), runs {what}"
    if host.cpu_mode == "custom" and host.cpu_model:
        usable = re.findall(r"<model usable='(yes|no)'[^>]*>([^<]+)</model>", capabilities)
        known = {name: flag for flag, name in usable}
        if host.cpu_model not in known:
            return Check(
                "libvirtd",
                FAIL,
                f"{detail}; CPU model {host.cpu_model!r} is unknown to this QEMU",
                "set host.cpu_model to a model `virsh domcapabilities` lists",
            )
        if known[host.cpu_model] == "no" and host.cpu_model_fallback == "forbid":
            return Check(
                "libvirtd",
                FAIL,
                f"{detail}; CPU model {host.cpu_model!r} is not usable on this host and cpu_model_fallback"
                " = 'forbid'",
                "choose a model `virsh domcapabilities` marks usable, or allow the fallback",
            )
    return Check("libvirtd", PASS, detail)


def check_libvirt_log_dir(config: SiteConfig, paths: HostPaths) -> Check:
    """host.libvirt_log_dir is where libvirt writes the guests' QEMU logs: the prolog reads them to
    tell a QEMU the host killed (a node fault) from a guest that stopped itself (the user's)."""
    path = Path(config.host.libvirt_log_dir)
    if path.is_dir() and os.access(path, os.R_OK | os.X_OK):
        return Check("libvirt QEMU logs", PASS, str(path))
    return Check(
        "libvirt QEMU logs",
        WARN,
        f"{path} is not a readable directory: a guest whose QEMU this node kills (the OOM killer) before"
        " it is ready will count as the user's fault, and the node will not drain",
        "set host.libvirt_log_dir to the directory libvirt writes <domain>.log files to",
    )


def check_bridge(config: SiteConfig, paths: HostPaths) -> Check:
    """The configured bridge exists, is up, and its MTU is at least the configured one.

    Uses the same check as the prolog (``netdev.check_bridge``, through ``ip -j``: /sys shows the
    wrong network namespace under nsenter, where the sandbox's nodes live).
    """
    from . import netdev
    from .errors import NetworkError

    bridge, mtu = config.network.bridge, config.network.mtu
    name = f"bridge {bridge}"
    try:
        netdev.check_bridge(bridge, mtu, source=config.source)
    except NetworkError as exc:
        text = str(exc)
        detail, _, fix = text.partition(": ")
        return Check(name, FAIL, detail, fix)
    actual = (netdev.link_info(bridge) or {}).get("mtu", "?")
    return Check(name, PASS, f"present and up, MTU {actual} (guests use {mtu})")


def check_job_key(config: SiteConfig, paths: HostPaths) -> Check:
    """The job key secret is readable and a job key can be derived from it, as the prolog does."""
    from .errors import HostError
    from .jobkey import job_key, read_secret

    path = config.job_key_secret
    try:
        job_key(read_secret(path), 1)
    except HostError as exc:
        return Check(
            "job key secret",
            FAIL,
            str(exc),
            f"use a root-only file that is the same on every compute node (Slurm's munge.key, or"
            f" `head -c 32 /dev/urandom > {path}; chmod 0400 {path}` copied to every node)",
        )
    except ImportError as exc:
        return Check(
            "job key secret", FAIL, f"cannot derive a job key: {exc}", "install python3-cryptography"
        )
    return Check("job key secret", PASS, f"{path} readable; job keys derive")


def check_tools(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """The programs the prolog runs, found as the prolog finds them (slurmd gives it no PATH), and
    the job isolation rules accepted by this kernel's nftables (``nft -c``, as root)."""
    import shutil

    from . import netdev
    from .errors import VcError

    checks = []
    # images.create_overlay runs "qemu-img" by name: without PATH, Python searches os.defpath.
    qemu_img = shutil.which("qemu-img", path=os.defpath)
    checks.append(
        Check("qemu-img", PASS, qemu_img)
        if qemu_img
        else Check(
            "qemu-img", FAIL, f"not found in {os.defpath} (the prolog has no PATH)", "apt install qemu-utils"
        )
    )
    if config.network.isolation == "none":
        checks.append(Check("nftables", PASS, "network.isolation = 'none': no rules installed"))
        return checks
    nft = shutil.which("nft", path=netdev.TOOL_PATH)
    if not nft:
        checks.append(
            Check(
                "nftables",
                FAIL,
                f"nft not found in {netdev.TOOL_PATH} (network.isolation = 'nftables')",
                "apt install nftables, or set network.isolation = 'none'",
            )
        )
        return checks
    if os.geteuid() != 0:
        checks.append(Check("nftables", WARN, f"{nft} present; rules not tried (needs root)", "run as root"))
        return checks
    from .network import job_network

    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename.split(".")[0]
    try:
        network = job_network(1, [node], config.network)
        netdev.validate_ruleset(netdev.render_isolation(network, node))
    except VcError as exc:
        checks.append(
            Check("nftables", FAIL, f"a job's isolation rules on node {node}: {exc}", "see docs/network.md")
        )
        return checks
    checks.append(Check("nftables", PASS, f"{nft}: a job's isolation rules pass nft -c"))
    return checks


def check_images(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """Every catalog image's files exist and are readable; disk images also readable by QEMU's
    user, as the prolog requires (QEMU reads them without libvirt relabelling them:
    ``images.check_base_image``)."""
    from .errors import ImageError
    from .images import check_base_image, check_boot_files

    if not config.images:
        return [Check("images", FAIL, "the catalog is empty", "add an [images.NAME] table")]
    checks = []
    qemu = _qemu_identity(config, paths) if any(image.disk for image in config.images.values()) else None
    for name, image in sorted(config.images.items()):
        files = [path for path in (image.disk, image.kernel, image.initrd) if path]
        bad = [path for path in files if not os.access(path, os.R_OK)]
        if bad:
            checks.append(
                Check(f"image {name}", FAIL, f"not readable: {', '.join(bad)}", "fix the path in the catalog")
            )
            continue
        try:
            check_boot_files(image)
            if image.disk:
                check_base_image(image.disk, qemu=qemu)
        except ImageError as exc:
            checks.append(Check(f"image {name}", FAIL, str(exc), exc.fix or "fix the path in the catalog"))
            continue
        checks.append(Check(f"image {name}", PASS, ", ".join(files)))
    return checks


def check_state_dir(config: SiteConfig, paths: HostPaths) -> Check:
    """state_dir exists or can be made, and QEMU (libvirt's user, not root) can search every
    directory above it: the overlays, seeds and sockets of each job live below it."""
    path = Path(config.state_dir)
    name = "state_dir"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    from .qemu_access import closed_above, closed_directories

    qemu = _qemu_identity(config, paths)
    below = [path / "jobs"] if path.is_dir() else []  # the job directories' parent, if made already
    closed = closed_directories([*below, existing], qemu) + closed_above(existing, qemu)
    blocked = [str(p) for p in closed]
    if blocked:
        return Check(
            name,
            FAIL,
            f"{', '.join(blocked)} not searchable by {qemu.who}: QEMU cannot reach guest files",
            f"chmod o+x {' '.join(blocked)}, or move state_dir",
        )
    if not os.access(existing, os.W_OK):
        return Check(name, FAIL, f"{existing} is not writable", "run as root, or fix state_dir")
    if not _supports_direct_io(existing):
        return Check(
            name,
            FAIL,
            f"the file system of {existing} refuses O_DIRECT, which QEMU needs for the guests' overlays"
            " (cache='none'; tmpfs before Linux 6.6, for one)",
            "put state_dir on a disk file system (ext4, xfs)",
        )
    return Check(name, PASS, f"{path}{'' if path.exists() else ' (created at first use)'}")


def _supports_direct_io(directory: Path) -> bool:
    """Can a file in ``directory`` be opened with O_DIRECT?  (A probe file, removed at once.)"""
    import errno

    probe = directory / f".slurm-vc-doctor-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_DIRECT, 0o600))
    except OSError as exc:
        return exc.errno != errno.EINVAL  # other errors are not about O_DIRECT
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return True


def _file_system(mounts_text: str, path: str) -> tuple[str, str]:
    """(mount point, type) of the longest mount point of /proc/mounts that holds ``path``."""
    best, kind = "/", "?"
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return best, kind


def check_runtime_dir(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """runtime_dir is on a tmpfs (hugepage ledgers: three writes per job, state of this boot only),
    and no ledger is left where versions before runtime_dir kept them (<state_dir>/hugepages)."""
    from .hugepages import LEDGER_SUBDIR, ledger_dir_of

    path = os.path.abspath(config.runtime_dir)
    point, kind = _file_system(_read(os.path.join(paths.proc, "mounts")) or "", path)
    if kind in ("tmpfs", "ramfs"):
        checks = [Check("runtime_dir", PASS, f"{path} on {kind} ({point})")]
    else:
        checks = [
            Check(
                "runtime_dir",
                WARN,
                f"{path} is on {kind} ({point}), not a tmpfs: every job writes its hugepage ledger three"
                " times to it",
                "mount a tmpfs on /run (distributions normally do), or set runtime_dir to a tmpfs directory",
            )
        ]
    legacy = Path(config.state_dir, LEDGER_SUBDIR)
    old = sorted(p.name for p in legacy.glob("*.json")) if legacy.is_dir() else []
    if old:
        checks.append(
            Check(
                "old hugepage ledgers",
                WARN,
                f"{len(old)} in {legacy} ({', '.join(old[:5])}{', ...' if len(old) > 5 else ''}): jobs"
                " reserved before the ledgers moved to runtime_dir; their release would miss them",
                f"while no job starts or ends: move each <job>.json to {ledger_dir_of(config)}/"
                "<job>.<state>.json, <state> as recorded in the file",
            )
        )
    return checks


def _slurm_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z]+)\s*=\s*(.*)$", line)
        if match:
            settings[match.group(1).lower()] = match.group(2).strip()
    return settings


def _with_includes(text: str, base_dir: str, depth: int = 0) -> str:
    """slurm.conf text with its ``Include FILE`` lines (globs; relative to slurm.conf's directory)
    replaced by the files' text, as slurmd reads it; a later setting wins, as in Slurm."""
    import glob

    lines = []
    for line in text.splitlines():
        match = re.match(r"^\s*include\s+(\S+)", line.split("#", 1)[0], re.IGNORECASE)
        if not match or depth >= 10:
            lines.append(line)
            continue
        pattern = os.path.join(base_dir, match.group(1))  # an absolute path stays as it is
        for path in sorted(glob.glob(pattern)):
            included = _read(path)
            if included is not None:
                lines.append(_with_includes(included, base_dir, depth + 1))
    return "\n".join(lines)


def _configured_slurm_conf(paths: HostPaths) -> str:
    """The slurm.conf path this node is configured with: ``paths``, $SLURM_CONF, or the default."""
    return paths.slurm_conf or os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF


def _configless_slurm_conf(paths: HostPaths) -> str:
    """slurmd's copy of slurm.conf on a configless node (fetched from slurmctld)."""
    return os.path.join(paths.slurm_configless, "slurm.conf")


def _slurm_conf(paths: HostPaths) -> tuple[str, Optional[str], bool]:
    """``(path, text, configless)`` of the slurm.conf slurmd uses: the file, or on a configless node
    slurmd's copy; text None when neither can be read."""
    conf_path = _configured_slurm_conf(paths)
    text = _read(conf_path)
    if text is not None:
        return conf_path, text, False
    configless = _configless_slurm_conf(paths)
    text = _read(configless)
    return (configless, text, True) if text is not None else (conf_path, None, False)


def _slurm_settings_in(conf_path: str, text: str) -> dict[str, str]:
    """The settings of slurm.conf ``text`` read from ``conf_path`` (lower-case keys), with its
    ``Include`` lines followed relative to its directory."""
    return _slurm_settings(_with_includes(text, os.path.dirname(conf_path)))


def _slurm_settings_of(paths: HostPaths) -> dict[str, str]:
    """The settings of the slurm.conf slurmd uses (:func:`_slurm_conf`); empty if unreadable."""
    conf_path, text, _ = _slurm_conf(paths)
    return _slurm_settings_in(conf_path, text) if text is not None else {}


def check_slurm(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """slurm.conf has Prolog, Epilog, TaskProlog, PrologFlags=Alloc(,DeferBatch) and the plugstack entry."""
    conf_path, text, configless = _slurm_conf(paths)
    checks = []
    if text is None:
        return [
            Check(
                "slurm.conf",
                FAIL,
                f"cannot read {conf_path}, nor a configless copy in {_configless_slurm_conf(paths)}",
                "set SLURM_CONF or install Slurm (a configless slurmd must be running)",
            )
        ]
    if configless:
        wanted = _configured_slurm_conf(paths)
        checks.append(Check("slurm.conf", PASS, f"no {wanted}: read slurmd's configless copy {conf_path}"))
    settings = _slurm_settings_in(conf_path, text)
    for key, needle in (("Prolog", "prolog"), ("Epilog", "epilog"), ("TaskProlog", "task-prolog")):
        value = settings.get(key.lower(), "")
        if "slurm-vc" in value or needle in value:
            checks.append(Check(f"slurm.conf {key}", PASS, value))
        else:
            checks.append(
                Check(
                    f"slurm.conf {key}",
                    FAIL,
                    f"{key} = {value or '(unset)'}",
                    f"{key}=/usr/libexec/slurm-vc/...",
                )
            )
    flags = {flag.strip().lower() for flag in settings.get("prologflags", "").split(",") if flag.strip()}
    missing = [flag for flag in ("alloc", "deferbatch") if flag not in flags]
    checks.append(
        Check(
            "slurm.conf PrologFlags",
            FAIL if missing else PASS,
            settings.get("prologflags", "(unset)"),
            "PrologFlags=Alloc,DeferBatch (guests ready before the script)" if missing else "",
        )
    )
    timeout_text = settings.get("prologepilogtimeout", "")
    ready, lock = config.timeouts.ready, config.timeouts.lock
    if timeout_text.isdigit():
        timeout = int(timeout_text)
        status = FAIL if timeout <= ready else WARN if timeout < ready + lock else PASS
        checks.append(
            Check(
                "slurm.conf PrologEpilogTimeout",
                status,
                f"{timeout} s; timeouts.ready = {ready:g} s, timeouts.lock = {lock:g} s",
                f"PrologEpilogTimeout > timeouts.ready + timeouts.lock ({ready + lock:g} s): a prolog Slurm"
                " kills drains its node"
                if status != PASS
                else "",
            )
        )
    plugstack = settings.get("plugstackconfig") or os.path.join(os.path.dirname(conf_path), "plugstack.conf")
    if conf_path.startswith(paths.slurm_configless + "/"):
        # configless: slurmd uses its copy of the controller's file, whatever is at that path here
        plugstack = os.path.join(paths.slurm_configless, os.path.basename(plugstack))
    plug_text = _read(plugstack) or ""
    if "slurm_vc" in plug_text or "slurm-vc" in plug_text or "vcluster" in plug_text:
        checks.append(Check("plugstack entry", PASS, plugstack))
    else:
        checks.append(
            Check(
                "plugstack entry",
                FAIL,
                f"no slurm-vc plugin line in {plugstack}",
                "add: required /usr/lib/slurm/slurm_vc.so validator=/usr/bin/slurm-vc",
            )
        )
    return checks


# What the prolog and epilog import beyond the standard library, and the Debian package of each.
HOOK_MODULES = {
    "libvirt": "python3-libvirt",
    "lxml.etree": "python3-lxml",
    "pydantic": "pydantic 2 (pip; Debian 12's python3-pydantic is 1.x)",
    "psutil": "python3-psutil",
    "yaml": "python3-yaml",
    "pycdlib": "python3-pycdlib",
    "cryptography": "python3-cryptography",
}
_IMPORT_PROBE = """
import importlib, json, sys
missing = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        missing.append("%s (%s)" % (name, type(exc).__name__))
        continue
    if name == "pydantic" and not str(getattr(module, "VERSION", "0")).startswith(("2", "3")):
        missing.append("pydantic (%s installed, 2 needed)" % module.VERSION)
try:
    import slurm_vc
    version = slurm_vc.__version__
except Exception:
    version = None
print(json.dumps({"missing": missing, "slurm_vc": version}))
"""


def _hook_interpreter(script: str) -> Optional[str]:
    """The interpreter an installed hook script runs (its ``PYTHON="..."`` line); None for a source
    tree's script (``@PYTHON@``: it uses the project's .venv) or a script that is not ours."""
    match = re.search(r'^PYTHON="([^"@][^"]*)"', _read(script) or "", re.MULTILINE)
    return match.group(1) if match else None


def check_hook_python(config: SiteConfig, paths: HostPaths) -> list[Check]:
    """The interpreter slurm.conf's Prolog and Epilog scripts run has slurm_vc (this version) and every
    package the hooks import: otherwise every --vcluster job fails on this node, each a node fault.
    ``doctor`` itself may run under another Python (a venv, ``python3 -m``), so it is asked directly."""
    import json
    import subprocess

    from . import __version__

    settings = _slurm_settings_of(paths)
    interpreters: dict[str, list[str]] = {}
    for key in ("prolog", "epilog"):
        script = settings.get(key, "").split(",")[0].strip()
        interpreter = _hook_interpreter(script) if script else None
        if interpreter:
            interpreters.setdefault(interpreter, []).append(script)
    checks = []
    for interpreter, scripts in interpreters.items():
        name = f"hook Python {interpreter}"
        try:
            result = subprocess.run(
                [interpreter, "-I", "-c", _IMPORT_PROBE, *HOOK_MODULES],
                capture_output=True,
                text=True,
                timeout=60,
            )
            probe = json.loads(result.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            detail = f"{', '.join(scripts)} run {interpreter}, which does not run: {exc}"
            checks.append(
                Check(name, FAIL, detail, "reinstall slurm-vc with PYTHON= an interpreter of this node")
            )
            continue
        missing = probe["missing"]
        if missing:
            packages = sorted({HOOK_MODULES[entry.split()[0]] for entry in missing})
            checks.append(
                Check(
                    name,
                    FAIL,
                    f"cannot import {', '.join(missing)}",
                    f"install for {interpreter}: {'; '.join(packages)}",
                )
            )
        elif probe["slurm_vc"] is None:
            checks.append(
                Check(name, FAIL, "slurm_vc is not installed for it", "make install PYTHON=" + interpreter)
            )
        elif probe["slurm_vc"] != __version__:
            detail = f"its slurm_vc is {probe['slurm_vc']}, this doctor is {__version__}"
            checks.append(Check(name, WARN, detail, f"install the same version for {interpreter}"))
        else:
            checks.append(
                Check(name, PASS, f"slurm_vc {__version__} and {len(HOOK_MODULES)} packages import")
            )
    return checks


CHECKS: list[Callable[[SiteConfig, HostPaths], object]] = [
    check_virtualisation,
    check_kvm_access,
    check_topology,
    check_hugepages,
    check_libvirt,
    check_libvirt_log_dir,
    check_bridge,
    check_job_key,
    check_tools,
    check_images,
    check_state_dir,
    check_runtime_dir,
    check_slurm,
    check_hook_python,
]


def run_checks(config: SiteConfig, paths: HostPaths = HostPaths()) -> list[Check]:
    """Run every check; a check that crashes is reported as a failure, never raised."""
    _libvirt_qemu_user.cache_clear()  # ask libvirt afresh once per run, not once per check
    results: list[Check] = []
    for check in CHECKS:
        try:
            outcome = check(config, paths)
        except Exception as exc:  # a doctor must report, not die
            outcome = Check(check.__name__.removeprefix("check_"), FAIL, f"check failed: {exc}")
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    return results


def format_table(checks: list[Check]) -> str:
    """A plain-text table: status, check, detail, and the fix under each failure."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"[{check.status:>4}] {check.name:<{width}}  {check.detail}")
        if check.status != PASS and check.fix:
            lines.append(f"{'':7} {'':<{width}}  fix: {check.fix}")
    failed = sum(check.status == FAIL for check in checks)
    lines.append(f"{len(checks)} checks, {failed} failed")
    return "\n".join(lines)


def _read(path: object, default: Optional[str] = None) -> Optional[str]:
    try:
        return Path(str(path)).read_text()
    except OSError:
        return default
