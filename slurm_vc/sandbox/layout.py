"""Where a sandbox cluster keeps everything, and the names and addresses it uses: pure, no I/O.

A sandbox is identified by its *name* (default ``vcsbx``).  From the name alone we derive every path,
interface name, namespace name, port and subnet, so that ``down`` can find what an interrupted ``up``
left behind even when the recorded state is lost, and two sandboxes with different names never collide.

Layout of the base directory (``/var/lib/slurm-vc-sandbox/<name>/``)::

    state.json                 what up created (processes, namespaces, links), written before each step
    etc/slurm.conf             shared by slurmctld, every slurmd and the client commands
    etc/plugstack.conf         the SPANK plugin line (when the plugin is built)
    etc/cgroup.conf            minimal, so slurmd does not complain
    etc/vcluster.toml          the login-side site config (validator at submit)
    etc/vcluster-<node>.toml   each node's site config (its own libvirtd socket and state dir)
    hooks/prolog, hooks/epilog, hooks/task-prolog, hooks/slurm-vc-exec
                               wrappers: pick etc/vcluster-$SLURMD_NODENAME.toml, set PATH, exec the
                               working tree's prolog/epilog (Slurm runs them with no PATH, and
                               slurm.conf is shared, so the node's config must be chosen at run time)
    bin/slurm-vc               `slurm-vc` for every user (first on the sandbox's PATH; the validator)
    munge/                     the sandbox's own munged (socket, pid, log, seed), owned by munge
    ctld/state/                slurmctld StateSaveLocation
    nodes/<node>/spool/        SlurmdSpoolDir (%n)
    nodes/<node>/state/        the node's slurm-vc state_dir (per-job state, overlays)
    libvirt/<node>/            the node's private libvirtd (slurm_vc.sandbox.libvirtd)
    log/                       slurmctld.log, slurmd-<node>.log, munged.log, daemon stdout/stderr

Runtime directory (``/run/slurm-vc-sandbox/<name>/``, like a real node's ``/run/slurm-vc``)::

    <node>/                    the node's slurm-vc runtime_dir (hugepage ledgers in hugepages/)
    login/                     the login side's runtime_dir (unused: only the validator runs there)

Each simulated node needs a runtime_dir of its own even though all of them share one kernel: a
ledger directory is one node's record of what its jobs hold.  ``down`` releases what the ledgers
still hold and removes the whole directory; the name alone finds it after an interrupted up/down.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

DEFAULT_NAME = "vcsbx"
DEFAULT_ROOT = "/var/lib/slurm-vc-sandbox"
DEFAULT_RUN_ROOT = "/run/slurm-vc-sandbox"
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}\Z")
MAX_NODES = 32
DEFAULT_BRIDGE_MTU = 9000
SLURMD_PORT = 6818  # every slurmd has its own network namespace, so one port serves all
CTLD_PORT_BASE = 16800  # slurmctld listens in the host namespace: a port per sandbox name
NODE_CPUS = 2  # CPUs each simulated node declares: the host's CPUs 0-1 (every test machine has them)


def node_cpu(index: int) -> int:
    """The host CPU that simulated node ``index`` (1-based) gives its jobs, round-robin.

    Every node declares the same real CPUs, and Slurm allocates the lowest free CPU first, so without
    this every node's guest would be pinned to CPU 0 and n guests would boot on one core while the
    others idle.  Each node keeps the other CPUs out of Slurm's reach (``CpuSpecList``), so the
    guests of a multi-node job spread over the host like on a real cluster.
    """
    return (index - 1) % NODE_CPUS


def validate_name(name: str) -> str:
    """Check a sandbox name: 1-8 of a-z 0-9, starting with a letter (interface names are short)."""
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid sandbox name {name!r}: use 1-8 lower-case letters and digits, starting with a letter"
            " (it prefixes interface names, which Linux limits to 15 characters)"
        )
    return name


def name_hash(name: str) -> int:
    """A stable hash of the sandbox name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def second_octet(name: str) -> int:
    """The sandbox's 10.X.0.0/16: X in 200..249, derived from the name."""
    return 200 + name_hash(name) % 50


def node_names(count: int) -> list[str]:
    """Node names ``node1`` .. ``nodeN``."""
    if not 1 <= count <= MAX_NODES:
        raise UsageError(f"--nodes must be between 1 and {MAX_NODES}, got {count}")
    return [f"node{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class SandboxLayout:
    """Names, paths and addresses of one sandbox.  Construct with :func:`layout_for`."""

    name: str
    root: str
    octet: int
    ctld_port: int
    run_root: str = DEFAULT_RUN_ROOT

    # -- paths ---------------------------------------------------------------------------------
    @property
    def base(self) -> Path:
        return Path(self.root) / self.name

    @property
    def lock_file(self) -> Path:
        """Serialises up/down of one sandbox; outside the base dir, which down may delete."""
        return Path(self.root) / f".{self.name}.lock"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    @property
    def hooks(self) -> Path:
        return self.base / "hooks"

    @property
    def launcher(self) -> Path:
        """``slurm-vc`` usable by every user of the sandbox (see cluster.pick_python)."""
        return self.bin / "slurm-vc"

    @property
    def log(self) -> Path:
        return self.base / "log"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def plugstack_conf(self) -> Path:
        return self.etc / "plugstack.conf"

    @property
    def login_config(self) -> Path:
        """Site config used on the 'login node' (the host namespace): the submit-time validator."""
        return self.etc / "vcluster.toml"

    def node_config(self, node: str) -> Path:
        return self.etc / f"vcluster-{node}.toml"

    @property
    def munge_dir(self) -> Path:
        return self.base / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def ctld_state(self) -> Path:
        return self.base / "ctld" / "state"

    def node_dir(self, node: str) -> Path:
        return self.base / "nodes" / node

    def node_state_dir(self, node: str) -> Path:
        return self.node_dir(node) / "state"

    @property
    def libvirt_dir(self) -> Path:
        """Base dir handed to PrivateLibvirtd; each node's daemon lives in libvirt/<node>/."""
        return self.base / "libvirt"

    def libvirt_socket(self, node: str) -> Path:
        """Must match PrivateLibvirtd(node, libvirt_dir).socket_path."""
        return self.libvirt_dir / node / "run" / "libvirt-sock"

    def libvirt_log_dir(self, node: str) -> Path:
        """Where the node's private libvirtd writes its guests' QEMU logs (its /var/log/libvirt/qemu:
        PrivateLibvirtd binds <dir>/log there)."""
        return self.libvirt_dir / node / "log" / "qemu"

    def libvirt_uri(self, node: str) -> str:
        return f"qemu+unix:///system?socket={self.libvirt_socket(node)}"

    @property
    def run_base(self) -> Path:
        """The sandbox's runtime directory: every node's runtime_dir is inside (see the docstring)."""
        return Path(self.run_root) / self.name

    def node_runtime_dir(self, node: str) -> Path:
        """``node``'s slurm-vc runtime_dir (``login`` for the login side)."""
        return self.run_base / node

    # -- names ---------------------------------------------------------------------------------
    @property
    def ctld_hostname(self) -> str:
        """slurmctld runs in its own UTS namespace with this hostname (SlurmctldHost must match)."""
        return f"{self.name}-ctld"

    @property
    def cluster_name(self) -> str:
        return self.name

    def netns(self, node: str) -> str:
        return f"{self.name}-{node}"

    @property
    def netns_prefix(self) -> str:
        return f"{self.name}-node"

    @property
    def control_bridge(self) -> str:
        """Host bridge of the Slurm control network (slurmctld <-> slurmd, srun <-> slurmstepd)."""
        return f"{self.name}-cbr"

    @property
    def fabric_bridge(self) -> str:
        """Host bridge joining every node's guest bridge (the guests' 'cluster network')."""
        return f"{self.name}-fab"

    @property
    def guest_bridge(self) -> str:
        """The guest bridge inside each node namespace: the site config's network.bridge."""
        return f"{self.name}-gbr"

    def control_veth(self, index: int) -> str:
        """Host end of node ``index``'s control veth; the node end is ``eth0`` in its namespace."""
        return f"{self.name}-c{index}"

    def fabric_veth(self, index: int) -> str:
        """Host end of node ``index``'s fabric veth; the node end is ``fab0`` on the guest bridge."""
        return f"{self.name}-f{index}"

    @property
    def link_prefix(self) -> str:
        """Every host-side link of this sandbox starts with this (used by ``down`` to sweep)."""
        return f"{self.name}-"

    # -- addresses -----------------------------------------------------------------------------
    def bridge_mac(self, kind: int, index: int = 0) -> str:
        """Fixed local MAC of bridge ``kind`` (1 control, 2 fabric, 3 guest) of node ``index``."""
        return f"02:76:{self.octet:02x}:{kind:02x}:{index:02x}:00"

    @property
    def control_subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.octet}.0.0/24")

    @property
    def host_address(self) -> str:
        """The host's (slurmctld's, the login side's) address on the control bridge."""
        return f"10.{self.octet}.0.254"

    def node_address(self, index: int) -> str:
        return f"10.{self.octet}.0.{index}"

    @property
    def guest_subnet(self) -> str:
        """network.subnet of the site configs: job blocks, plus block 0 for the nodes themselves."""
        return f"10.{self.octet}.128.0/17"

    def guest_host_address(self, index: int) -> str:
        """Node ``index``'s address (with the subnet's prefix) on its guest bridge.

        docs/network.md: each node's bridge gets an address in the *host block* (block 0 of
        network.subnet), so the node reaches its guests on-link (readiness, ssh from the job).
        """
        net = ipaddress.IPv4Network(self.guest_subnet)
        return f"{net.network_address + index}/{net.prefixlen}"

    @property
    def sandbox_net(self) -> ipaddress.IPv4Network:
        """Everything this sandbox uses: used to detect a collision with another sandbox."""
        return ipaddress.IPv4Network(f"10.{self.octet}.0.0/16")

    @property
    def first_job_id(self) -> int:
        """Job ids differ between sandboxes, so guest/domain names derived from them never collide."""
        return (self.octet - 199) * 100000


def layout_for(
    name: str = DEFAULT_NAME, root: str = DEFAULT_ROOT, run_root: str = DEFAULT_RUN_ROOT
) -> SandboxLayout:
    """The layout of sandbox ``name`` under ``root`` (runtime state under ``run_root``)."""
    validate_name(name)
    octet = second_octet(name)
    return SandboxLayout(
        name=name, root=root, octet=octet, ctld_port=CTLD_PORT_BASE + (octet - 200) * 2, run_root=run_root
    )


def node_memory_mb(total_mb: int, nodes: int) -> int:
    """RealMemory per node: half the host's memory shared by max(nodes, 3), at most 4 GiB, 256 MiB steps.

    The nodes oversubscribe one machine; sizing for at least three nodes keeps the advertised
    memory backed by real memory for the usual 3-node sandbox.
    """
    share = (total_mb // 2) // max(nodes, 3)
    return max(512, min(4096, share // 256 * 256))
