"""The virtual cluster network as pure data: addresses, names, /etc/hosts, ARP tables, hostfiles.

Every node's prolog calls :func:`job_network` with the same job id, node list and site settings
and gets the same table for the whole job, without talking to the other nodes and without DHCP.

The scheme (see ``docs/network.md`` for the limits and how to size the subnet):

- The site subnet (``network.subnet``, e.g. ``10.96.0.0/12``) is cut into blocks of
  ``network.block_prefix`` (default ``/24``).  Block 0 is kept for the hosts' own addresses, so a
  host on the bridge can reach every guest on-link.  Job ``J`` gets block ``1 + J mod (blocks - 1)``:
  consecutive job ids get distinct blocks, and two running jobs share a block only if their ids are
  congruent modulo ``blocks - 1``.
- Guest ``i`` (0-based, in the job's node-list order, one guest per node) gets
  ``block address + i + 1``: the block's network and broadcast addresses are never used, so a job
  has at most ``block size - 2`` guests.
- A guest's MAC is ``network.mac_prefix`` followed by the low 24 bits of its IPv4 address, so MACs
  are unique wherever IPs are (any private subnet is inside a /8).
- The guest's on-link prefix is the whole subnet, so the host block is reachable; isolation
  between jobs is enforced on the host (``slurm_vc.netdev``), not by netmasks.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from .errors import ConfigError, PlacementError, SlurmError, UsageError

if TYPE_CHECKING:  # only a type here: importing network.py does not pull in pydantic
    from .config import NetworkSettings

IFNAMSIZ = 15  # longest Linux interface name (16 bytes with the NUL)
TAP_PREFIX = "vct"  # every guest tap starts with this; the isolation rules rely on it
HOSTFILE_FORMATS = ("openmpi", "mpich", "spark", "plain")
_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
_FORMAT_FIELDS = {"job", "index", "node"}


@dataclass(frozen=True)
class Guest:
    """One guest of the job: where it runs and how it is named and addressed."""

    index: int  # 0-based position in the job's node list
    node: str  # Slurm node name of the host running it
    hostname: str  # short host name inside the virtual cluster
    fqdn: str  # hostname.domain
    ip: str  # dotted IPv4 address
    mac: str  # lower-case colon-separated MAC
    tap: str  # host tap device name (<= 15 characters, starts with TAP_PREFIX)
    domain_name: str  # libvirt domain name: vc-<jobid>-<node>
    vcpus: int  # slots in the hostfiles


@dataclass(frozen=True)
class JobNetwork:
    """The whole job's network table, identical on every node."""

    job_id: int
    guests: tuple[Guest, ...]
    subnet: str  # the site subnet, CIDR
    prefixlen: int  # the guests' on-link prefix length (the subnet's)
    block: str  # the job's own address block, CIDR
    host_block: str  # block 0 of the subnet: host addresses, reachable from guests
    bridge: str
    mtu: int
    domain: str
    mac_prefix: str
    isolation: str  # "nftables" or "none" (network.isolation)
    allowed_host_ports: tuple[int, ...]  # host ports guests may connect to (TCP and UDP)

    @property
    def netmask(self) -> str:
        """The guests' netmask in dotted form (for network-config files that want it)."""
        return str(ipaddress.IPv4Network(self.subnet).netmask)

    def guest_on(self, node: str) -> Guest:
        """The guest that runs on ``node``.  Raises KeyError if the node is not in the job."""
        for guest in self.guests:
            if guest.node == node:
                return guest
        raise KeyError(node)

    def peers_of(self, node: str) -> tuple[Guest, ...]:
        """Every guest except the one on ``node``."""
        return tuple(guest for guest in self.guests if guest.node != node)


def block_count(settings: NetworkSettings) -> int:
    """How many blocks of ``block_prefix`` the subnet holds (including the host block 0)."""
    subnet = ipaddress.IPv4Network(settings.subnet)
    return 1 << (settings.block_prefix - subnet.prefixlen)


def job_block_count(settings: NetworkSettings) -> int:
    """How many distinct job blocks exist: the most jobs that can surely run at once without sharing."""
    return block_count(settings) - 1


def max_guests_per_job(settings: NetworkSettings) -> int:
    """The most guests one job can have: the block size minus network and broadcast addresses."""
    return (1 << (32 - settings.block_prefix)) - 2


def host_block(settings: NetworkSettings) -> ipaddress.IPv4Network:
    """Block 0 of the subnet, never given to a job: give each node's bridge an address here."""
    subnet = ipaddress.IPv4Network(settings.subnet)
    return ipaddress.IPv4Network((int(subnet.network_address), settings.block_prefix))


def job_block(job_id: int, settings: NetworkSettings) -> ipaddress.IPv4Network:
    """The address block of job ``job_id``: block ``1 + job_id mod (blocks - 1)`` of the subnet."""
    if job_id < 0:
        raise SlurmError(f"job id {job_id} is negative")
    subnet = ipaddress.IPv4Network(settings.subnet)
    index = 1 + job_id % job_block_count(settings)
    size = 1 << (32 - settings.block_prefix)
    return ipaddress.IPv4Network((int(subnet.network_address) + index * size, settings.block_prefix))


def mac_for_ip(ip: Union[str, ipaddress.IPv4Address], mac_prefix: str) -> str:
    """``mac_prefix`` (three octets) followed by the low 24 bits of ``ip``."""
    low = int(ipaddress.IPv4Address(ip)) & 0xFFFFFF
    octets = [(low >> shift) & 0xFF for shift in (16, 8, 0)]
    return mac_prefix.lower() + "".join(f":{octet:02x}" for octet in octets)


def tap_name(job_id: int, index: int) -> str:
    """The host tap device of guest ``index`` of job ``job_id``: ``vct<job>i<index>``.

    When that is longer than IFNAMSIZ (15) it becomes ``vct`` plus 12 hex digits of a hash of
    both numbers: still unique in practice, still starting with ``vct``.
    """
    name = f"{TAP_PREFIX}{job_id}i{index}"
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha256(f"{job_id}/{index}".encode()).hexdigest()
    return TAP_PREFIX + digest[: IFNAMSIZ - len(TAP_PREFIX)]


def domain_name(job_id: int, node: str) -> str:
    """The libvirt domain name of the job's guest on ``node``: ``vc-<jobid>-<node>``."""
    return f"vc-{job_id}-{node}"


def check_hostname_format(hostname_format: str) -> None:
    """Raise ValueError (a message for the admin) unless ``hostname_format`` is a ``str.format``
    pattern over ``{job}``, ``{index}`` and ``{node}`` alone, without format specs or conversions
    (``{index:>99999999}`` would build a huge string), that gives a valid host name for a sample guest."""
    try:
        fields = list(string.Formatter().parse(hostname_format))
    except ValueError as exc:
        raise ValueError(f"{hostname_format!r} is not a valid pattern: {exc}") from None
    names = {name for _, name, _, _ in fields if name is not None}
    unknown = names - _FORMAT_FIELDS
    if unknown:
        raise ValueError(
            f"{hostname_format!r}: unknown field(s) {', '.join(repr(n) for n in sorted(unknown))};"
            " use {job}, {index} and {node}"
        )
    if any(spec or conversion for _, name, spec, conversion in fields if name is not None):
        raise ValueError(
            f"{hostname_format!r}: use plain {{job}}, {{index}} and {{node}}, without ':' or '!'"
        )
    sample = hostname_format.format(job=1234, index=0, node="node1").lower()
    if not _LABEL_RE.match(sample):
        raise ValueError(
            f"{hostname_format!r} gives {sample!r} for job 1234, guest 0 on node1, which is not a valid host"
            " name (letters, digits and '-', at most 63, no leading/trailing '-')"
        )


def check_domain(domain: str) -> None:
    """Raise ValueError unless ``domain`` is empty or a DNS name of valid labels (at most 200 chars)."""
    labels = domain.lower().split(".")
    if domain and (len(domain) > 200 or not all(_LABEL_RE.match(label) for label in labels)):
        raise ValueError(
            f"{domain!r} is not a DNS domain: dot-separated labels of letters, digits and '-'"
            " (no leading/trailing '-'), at most 200 characters; or empty for no domain"
        )


def check_ports(ports: Sequence[int]) -> None:
    """Raise ValueError unless every port is a TCP port number (1-65535)."""
    bad = [port for port in ports if not 1 <= port <= 65535]
    if bad:
        raise ValueError(f"{bad}: TCP ports are 1-65535, got {', '.join(map(str, bad))}")


def _hostname(settings: NetworkSettings, job_id: int, index: int, node: str) -> str:
    """Guest ``index``'s host name; the pattern itself was checked by :func:`check_hostname_format`."""
    name = settings.hostname_format.format(job=job_id, index=index, node=node).lower()
    if not _LABEL_RE.match(name):
        raise ConfigError(
            f"network.hostname_format {settings.hostname_format!r} gives {name!r} for node {node!r}, "
            "which is not a valid host name (letters, digits and '-', at most 63, no leading/trailing '-')"
        )
    return name


def job_network(
    job_id: int,
    node_names: Sequence[str],
    settings: NetworkSettings,
    vcpus_per_node: Union[Mapping[str, int], int] = 1,
) -> JobNetwork:
    """The job's whole network table: one guest per node, in node-list order.

    ``vcpus_per_node`` is the slot count per guest for the hostfiles (one number for all, or a
    mapping node -> vCPUs).  Raises SlurmError for an empty or duplicated node list and
    PlacementError when the job has more nodes than its address block holds.
    """
    nodes = list(node_names)
    if not nodes:
        raise SlurmError(f"job {job_id} has an empty node list")
    duplicates = sorted({node for node in nodes if nodes.count(node) > 1})
    if duplicates:
        raise SlurmError(f"job {job_id}: node list names {', '.join(duplicates)} more than once")
    limit = max_guests_per_job(settings)
    if len(nodes) > limit:
        raise PlacementError(
            f"job {job_id} has {len(nodes)} nodes, but a virtual cluster holds at most {limit} guests "
            f"on this site (network.block_prefix = {settings.block_prefix}); ask for fewer nodes"
        )
    # The config checks both when it loads; again here for settings built without that validation.
    try:
        check_ports(settings.allowed_host_ports)
    except ValueError as exc:
        raise ConfigError(f"network.allowed_host_ports: {exc}") from None
    try:
        check_hostname_format(settings.hostname_format)
    except ValueError as exc:
        raise ConfigError(f"network.hostname_format {exc}") from None
    block = job_block(job_id, settings)
    guests = []
    for index, node in enumerate(nodes):
        if isinstance(vcpus_per_node, int):
            vcpus = vcpus_per_node
        else:
            try:
                vcpus = vcpus_per_node[node]
            except KeyError:
                raise SlurmError(f"job {job_id}: no vCPU count for node {node}") from None
        if vcpus < 1:
            raise SlurmError(f"job {job_id}: node {node} has {vcpus} vCPUs")
        hostname = _hostname(settings, job_id, index, node)
        ip = block.network_address + index + 1
        guests.append(
            Guest(
                index=index,
                node=node,
                hostname=hostname,
                fqdn=f"{hostname}.{settings.domain}" if settings.domain else hostname,
                ip=str(ip),
                mac=mac_for_ip(ip, settings.mac_prefix),
                tap=tap_name(job_id, index),
                domain_name=domain_name(job_id, node),
                vcpus=vcpus,
            )
        )
    hostnames = [guest.hostname for guest in guests]
    if len(set(hostnames)) != len(hostnames):
        raise ConfigError(
            f"network.hostname_format {settings.hostname_format!r} gives the same host name to several "
            "guests; include {index} or {node}"
        )
    subnet = ipaddress.IPv4Network(settings.subnet)
    return JobNetwork(
        job_id=job_id,
        guests=tuple(guests),
        subnet=str(subnet),
        prefixlen=subnet.prefixlen,
        block=str(block),
        host_block=str(host_block(settings)),
        bridge=settings.bridge,
        mtu=settings.mtu,
        domain=settings.domain,
        mac_prefix=settings.mac_prefix,
        isolation=settings.isolation,
        allowed_host_ports=tuple(sorted(set(settings.allowed_host_ports))),
    )


def hosts_lines(network: JobNetwork) -> list[str]:
    """/etc/hosts lines for every guest (``IP FQDN HOSTNAME``), the guest's own name included.

    There is deliberately no ``127.0.1.1 <own name>`` line: MPI and Spark would advertise loopback.
    """
    lines = []
    for guest in network.guests:
        names = [guest.fqdn, guest.hostname] if guest.fqdn != guest.hostname else [guest.hostname]
        lines.append(f"{guest.ip}\t{' '.join(names)}")
    return lines


def hosts_file(network: JobNetwork) -> str:
    """A complete /etc/hosts for a guest: loopback lines, then every guest of the job."""
    header = [
        f"# written by slurm-vc for job {network.job_id}",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    return "\n".join(header + hosts_lines(network)) + "\n"


def arp_entries(network: JobNetwork, node: Optional[str] = None) -> list[tuple[str, str]]:
    """Static ARP entries ``(ip, mac)`` for every peer of the guest on ``node`` (all guests if None)."""
    return [(guest.ip, guest.mac) for guest in network.guests if guest.node != node]


def hostfile(network: JobNetwork, fmt: str = "plain") -> str:
    """A hostfile for the guests, slots = vCPUs.

    Formats: ``openmpi`` (``host slots=N``), ``mpich`` (``host:N``), ``spark`` (Spark's
    conf/workers: one host per line) and ``plain`` (one host per line).
    """
    if fmt == "openmpi":
        lines = [f"{guest.hostname} slots={guest.vcpus}" for guest in network.guests]
    elif fmt == "mpich":
        lines = [f"{guest.hostname}:{guest.vcpus}" for guest in network.guests]
    elif fmt in ("spark", "plain"):
        lines = [guest.hostname for guest in network.guests]
    else:
        raise UsageError(f"unknown hostfile format {fmt!r}: use one of {', '.join(HOSTFILE_FORMATS)}")
    return "\n".join(lines) + "\n"


__all__ = [
    "HOSTFILE_FORMATS",
    "IFNAMSIZ",
    "TAP_PREFIX",
    "Guest",
    "JobNetwork",
    "arp_entries",
    "block_count",
    "domain_name",
    "host_block",
    "hostfile",
    "hosts_file",
    "hosts_lines",
    "job_block",
    "job_block_count",
    "job_network",
    "mac_for_ip",
    "max_guests_per_job",
    "tap_name",
]
