"""Host side of the virtual cluster network: bridge checks, tap checks and per-job isolation rules.

libvirt creates each guest's tap itself (``<interface type='bridge'>`` with ``<target dev=...>``)
and plugs it into the site bridge, so this module only checks the bridge and the tap names and
installs/removes the job's isolation rules.

Isolation is one nftables table per job in the ``bridge`` family, ``slurm_vc_<jobid>``, rendered
by the pure :func:`render_isolation` and loaded atomically with ``nft -f``.  Why nftables bridge
rules (and not nwfilter, ebtables or VLANs) and what each chain does: ``docs/network.md``.

Everything here acts on the *current* network namespace (the prolog runs inside slurmd's, which
is the node's).  Tests and the sandbox may pass ``netns=`` (a name under /run/netns or a path) to
run the tools through ``nsenter --net``.  Interfaces are read over netlink (``ip -j``), never from
/sys/class/net, because /sys shows the namespace it was mounted in, not the caller's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from typing import Callable, Optional

from .errors import NetworkError
from .filelock import locked_file
from .network import TAP_PREFIX, JobNetwork

TABLE_PREFIX = "slurm_vc_"
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the prolog runs without PATH
ISOLATION_LOCK = "isolation.lock"  # in runtime_dir: serialises the block check and table load
_TABLE_RE = re.compile(r"^" + TABLE_PREFIX + r"([0-9]+)\Z")


# ----------------------------------------------------------------------------- running tools


def _which(name: str) -> Optional[str]:
    return shutil.which(name, path=os.environ.get("PATH") or TOOL_PATH) or shutil.which(name, path=TOOL_PATH)


def _tool(name: str) -> str:
    path = _which(name)
    if not path:
        raise NetworkError(f"'{name}' is not installed on this node (needed for the guest network)")
    return path


def _has_tool(name: str) -> bool:
    return _which(name) is not None


def _command(argv: Sequence[str], netns: Optional[str]) -> list[str]:
    command = [_tool(argv[0]), *argv[1:]]
    if netns is None:
        return command
    path = netns if os.path.isabs(netns) else f"/run/netns/{netns}"
    return [_tool("nsenter"), f"--net={path}", "--", *command]


def _run(
    argv: Sequence[str], netns: Optional[str], *, stdin: Optional[str] = None, check: bool = True
) -> subprocess.CompletedProcess:
    command = _command(argv, netns)
    try:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise NetworkError(f"'{' '.join(argv)}' did not finish within 60 s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise NetworkError(f"'{' '.join(argv)}' failed (exit {result.returncode}): {detail}")
    return result


# ----------------------------------------------------------------------------- bridge and taps


def link_info(name: str, *, netns: Optional[str] = None) -> Optional[dict]:
    """``ip -j -d link show dev NAME`` as a dict, or None when there is no such interface."""
    result = _run(["ip", "-j", "-d", "link", "show", "dev", name], netns, check=False)
    if result.returncode != 0:
        if "does not exist" in result.stderr or "Cannot find device" in result.stderr:
            return None
        raise NetworkError(f"cannot read interface {name}: {result.stderr.strip()}")
    links = json.loads(result.stdout or "[]")
    return links[0] if links else None


def delete_link(name: str, *, netns: Optional[str] = None) -> None:
    """Delete the interface ``name`` if it exists (idempotent).  NetworkError if it cannot be deleted,
    so that the caller keeps it recorded and the epilog or gc tries again."""
    if link_info(name, netns=netns) is None:
        return
    result = _run(["ip", "link", "del", name], netns, check=False)
    if result.returncode != 0 and link_info(name, netns=netns) is not None:
        raise NetworkError(f"cannot delete interface {name}: {(result.stderr or result.stdout).strip()}")


def check_bridge(
    name: str, mtu: int, *, netns: Optional[str] = None, source: str = "the site configuration"
) -> None:
    """Raise NetworkError unless ``name`` is an up bridge whose MTU is at least ``mtu``.

    The messages name the bridge, the config key to change (``network.bridge`` / ``network.mtu``
    in ``source``) and, for the MTU, both numbers.
    """
    info = link_info(name, netns=netns)
    if info is None:
        raise NetworkError(
            f"bridge '{name}' does not exist on this node: create it over the cluster network "
            f"(e.g. 'ip link add {name} type bridge'), or change network.bridge in {source}"
        )
    kind = info.get("linkinfo", {}).get("info_kind")
    if kind != "bridge":
        raise NetworkError(
            f"'{name}' exists but is a {kind or 'plain'} interface, not a bridge: "
            f"change network.bridge in {source}"
        )
    if "UP" not in info.get("flags", []):
        raise NetworkError(f"bridge '{name}' is down: 'ip link set {name} up'")
    actual = int(info.get("mtu", 0))
    if actual < mtu:
        raise NetworkError(
            f"bridge '{name}' has MTU {actual}, smaller than network.mtu = {mtu} in {source}: "
            f"raise it ('ip link set {name} mtu {mtu}', and on its uplink) or lower network.mtu"
        )


def bridge_max_mtu(name: str, *, netns: Optional[str] = None) -> int:
    """The largest MTU the bridge's ports allow (the smallest ``max_mtu`` of the bridge and its ports)."""
    info = link_info(name, netns=netns)
    if info is None:
        raise NetworkError(f"bridge '{name}' does not exist on this node")
    limit = int(info.get("max_mtu") or 65535)
    ports = json.loads(_run(["ip", "-j", "-d", "link", "show", "master", name], netns).stdout or "[]")
    for port in ports:
        limit = min(limit, int(port.get("max_mtu") or 65535))
    return limit


def check_tap_free(tap: str, *, netns: Optional[str] = None) -> None:
    """Raise NetworkError if an interface named ``tap`` already exists (a stale guest of the same job)."""
    info = link_info(tap, netns=netns)
    if info is not None:
        raise NetworkError(
            f"tap '{tap}' already exists on this node (a guest of this job that was not torn down?): "
            "run 'slurm-vc gc' or remove it with 'ip link del " + tap + "'"
        )


# ----------------------------------------------------------------------------- isolation rules (pure)


def table_name(job_id: int) -> str:
    """The nftables table (family bridge) holding job ``job_id``'s rules."""
    return f"{TABLE_PREFIX}{job_id}"


def _elements(items: Sequence[str]) -> str:
    return "elements = { " + ", ".join(items) + " }" if items else ""


def render_isolation(network: JobNetwork, node: Optional[str] = None) -> str:
    """The nft script that (re)installs job isolation atomically; pure.

    With ``node`` only that node's guest taps are named (the prolog's case); without it every
    guest's tap is, which gives the same script on every node.  The script first creates and
    deletes the table so that loading it replaces any previous version in one transaction.
    """
    guests = network.guests if node is None else tuple(g for g in network.guests if g.node == node)
    if not guests:
        raise NetworkError(f"node {node} runs no guest of job {network.job_id}")
    table = table_name(network.job_id)
    taps = [f'"{g.tap}"' for g in guests]
    tap_mac = [f'"{g.tap}" . {g.mac}' for g in guests]
    tap_ip = [f'"{g.tap}" . {g.ip}' for g in guests]
    job_macs = [g.mac for g in network.guests]
    ports = [str(port) for port in network.allowed_host_ports]
    port_rule = "meta l4proto { tcp, udp } th dport @host_ports accept" if ports else ""
    lines = f"""\
# slurm-vc isolation for job {network.job_id}: block {network.block}, bridge {network.bridge}
table bridge {table}
delete table bridge {table}
table bridge {table} {{
	comment "slurm-vc job {network.job_id} block {network.block}"
	set job_block {{ type ipv4_addr; flags interval; elements = {{ {network.block} }} }}
	set host_block {{ type ipv4_addr; flags interval; elements = {{ {network.host_block} }} }}
	set taps {{ type ifname; {_elements(taps)} }}
	set tap_mac {{ type ifname . ether_addr; {_elements(tap_mac)} }}
	set tap_ip {{ type ifname . ipv4_addr; {_elements(tap_ip)} }}
	set job_macs {{ type ether_addr; {_elements(job_macs)} }}
	set host_ports {{ type inet_service; {_elements(ports)} }}

	# Anti-spoofing: a frame from one of this job's taps carries that guest's own MAC and IPv4
	# address (Ethernet source, IPv4 source, ARP sender); only IPv4 and ARP leave a guest.
	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
		iifname != @taps accept
		iifname . ether saddr != @tap_mac drop
		ether type ip iifname . ip saddr != @tap_ip drop
		ether type arp iifname . arp saddr ether != @tap_mac drop
		ether type arp iifname . arp saddr ip != @tap_ip drop
		ether type {{ ip, arp }} accept
		drop
	}}

	# Bridged frames: from this job's guests only to the job's block (or the host block, filtered
	# like traffic to this host), never into another job's tap; into this job's taps only from the
	# job's own guests (any node) or from the host block.
	chain forward {{
		type filter hook forward priority filter; policy accept;
		iifname @taps jump from_guest
		oifname @taps jump to_guest
	}}

	chain from_guest {{
		oifname "{TAP_PREFIX}*" oifname != @taps drop
		ip daddr @host_block jump guest_to_host
		arp daddr ip @host_block accept
		ip daddr != @job_block drop
		arp daddr ip != @job_block drop
	}}

	chain to_guest {{
		ether type != {{ ip, arp }} drop
		ip saddr @host_block accept
		arp saddr ip @host_block accept
		ether saddr != @job_macs drop
		ip saddr != @job_block drop
		arp saddr ip != @job_block drop
	}}

	# Frames from this job's guests to this host: ARP, the allowed ports, and replies to
	# connections the host opened (stateless: the bridge family may have no conntrack).
	chain input {{
		type filter hook input priority filter; policy accept;
		iifname != @taps accept
		ether type arp accept
		jump guest_to_host
	}}

	chain guest_to_host {{
		tcp flags & (syn | ack) != syn accept
		{port_rule}
		icmp type {{ echo-reply, destination-unreachable, time-exceeded }} accept
		drop
	}}
}}
"""
    # Drop the empty lines an empty rule leaves, so the script stays tidy.
    return "\n".join(line for line in lines.splitlines() if line.strip() or line == "") + "\n"


# ----------------------------------------------------------------------------- isolation (actuators)


def isolated_jobs(*, netns: Optional[str] = None) -> list[int]:
    """Job ids that have an isolation table in this namespace (for gc); none without nft."""
    if not _has_tool("nft"):
        return []
    tool = _run(["nft", "-j", "list", "tables", "bridge"], netns)
    jobs = []
    for item in json.loads(tool.stdout or "{}").get("nftables", []):
        match = _TABLE_RE.match(item.get("table", {}).get("name", ""))
        if match:
            jobs.append(int(match.group(1)))
    return sorted(jobs)


def block_users(*, netns: Optional[str] = None) -> dict[int, ipaddress.IPv4Network]:
    """job id -> address block, read from the ``job_block`` set of every job table here."""
    result = _run(["nft", "-j", "list", "sets", "bridge"], netns)
    blocks = {}
    for item in json.loads(result.stdout or "{}").get("nftables", []):
        found = item.get("set")
        if not found or found.get("name") != "job_block":
            continue
        match = _TABLE_RE.match(found.get("table", ""))
        if not match:
            continue
        for element in found.get("elem", []):
            prefix = element.get("prefix") if isinstance(element, dict) else None
            if prefix:
                blocks[int(match.group(1))] = ipaddress.IPv4Network((prefix["addr"], prefix["len"]))
    return blocks


def check_block_free(network: JobNetwork, *, netns: Optional[str] = None) -> None:
    """Raise NetworkError if another job on this node already uses this job's address block.

    Two jobs share a block when their ids are congruent modulo the number of job blocks; see
    docs/network.md for sizing the subnet so that this cannot happen.
    """
    mine = ipaddress.IPv4Network(network.block)
    subnet = ipaddress.IPv4Network(network.subnet)
    blocks = (1 << (mine.prefixlen - subnet.prefixlen)) - 1
    for job, block in sorted(block_users(netns=netns).items()):
        if job != network.job_id and block.overlaps(mine):
            raise NetworkError(
                f"job {network.job_id} would use address block {mine}, which job {job} on this node "
                f"already uses: their ids are congruent modulo {blocks}, the number of job blocks "
                f"network.subnet ({subnet}) holds at network.block_prefix /{mine.prefixlen}. "
                "Use a larger subnet or smaller blocks so that there are more blocks than jobs "
                "that can run at once"
            )


def isolation_lock_path(runtime_dir: str) -> str:
    """The node's isolation lock file, ``<runtime_dir>/isolation.lock`` (see :func:`apply_isolation`)."""
    return os.path.join(runtime_dir, ISOLATION_LOCK)


def apply_isolation(
    network: JobNetwork,
    node: Optional[str] = None,
    *,
    netns: Optional[str] = None,
    lock: Optional[tuple[str, float]] = None,
) -> Callable[[], None]:
    """Install the job's isolation table (atomically, replacing an older one); return its undo.

    Does nothing (and returns a no-op undo) when ``network.isolation`` is ``"none"``.  Raises
    NetworkError when another job here already uses the same address block, or nft fails.
    ``lock`` = (path, timeout): the node's isolation lock, held from the block check to the
    table load so that two prologs of jobs sharing a block cannot both pass the check
    (``isolation_lock_path``); StateError if it stays taken.  None only for a caller that is
    alone on the node (tests).
    """
    if network.isolation == "none":
        return lambda: None
    with locked_file(lock[0], "node isolation lock", lock[1]) if lock else contextlib.nullcontext():
        check_block_free(network, netns=netns)
        _run(["nft", "-f", "-"], netns, stdin=render_isolation(network, node))
    job_id = network.job_id

    def undo() -> None:
        remove_isolation(job_id, netns=netns)

    return undo


def remove_isolation(job_id: int, *, netns: Optional[str] = None) -> None:
    """Remove job ``job_id``'s table; idempotent (no table, or no nft at all, is not an error)."""
    if not _has_tool("nft"):
        return  # nothing can have been installed
    table = table_name(job_id)
    # Creating then deleting in one transaction succeeds whether or not the table exists.
    _run(["nft", "-f", "-"], netns, stdin=f"table bridge {table}\ndelete table bridge {table}\n")


def validate_ruleset(script: str, *, netns: Optional[str] = None) -> None:
    """``nft -c -f``: parse and check a script against the kernel without applying it (needs root)."""
    _run(["nft", "-c", "-f", "-"], netns, stdin=script)


__all__ = [
    "ISOLATION_LOCK",
    "TABLE_PREFIX",
    "apply_isolation",
    "block_users",
    "bridge_max_mtu",
    "check_block_free",
    "check_bridge",
    "check_tap_free",
    "isolated_jobs",
    "isolation_lock_path",
    "link_info",
    "remove_isolation",
    "render_isolation",
    "table_name",
    "validate_ruleset",
]
