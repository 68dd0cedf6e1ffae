"""Host-side network on real kernel objects: bridge checks and per-job nftables isolation.

A private network namespace plays the node (with its bridge and a host address in the host
block); one namespace per guest, plugged into the bridge by a veth whose bridge end carries the
guest's tap name, plays the guests of two jobs.  No QEMU is needed: the rules only see frames.

Every "blocked" check has a control: the same traffic is shown to pass without the rules (before
they are applied and again after they are removed), so a broken topology cannot pass as isolation.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid

import pytest

from slurm_vc import netdev
from slurm_vc.config import NetworkSettings
from slurm_vc.errors import NetworkError
from slurm_vc.network import job_network

pytestmark = pytest.mark.integration

if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("nsenter"):
    pytest.skip("needs root, nft and nsenter", allow_module_level=True)

# A subnet of this test's own, so parallel testbeds (and the 10.96/12 default) never collide.
SETTINGS = NetworkSettings(
    bridge="nwtbr0", subnet="10.231.0.0/16", block_prefix=24, allowed_host_ports=[4711], mtu=1500
)
HOST_IP = "10.231.0.1"  # the node's own address, in the host block (block 0)
ALLOWED_PORT, CLOSED_PORT, GUEST_PORT = 4711, 4712, 4713
JOB_A, JOB_B = 11, 12
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("nsenter", f"--net=/run/netns/{ns}", "--", *argv, check=check)


class Bed:
    """Node namespaces, each with a bridge, and guest namespaces attached by veth."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.nodes: dict[str, str] = {}  # node name -> namespace
        self.namespaces: list[str] = []
        self.guest_ns: dict[tuple[int, int], str] = {}
        self.servers: list[subprocess.Popen] = []

    def add_node(self, name: str) -> str:
        ns = f"nwt{self.tag}{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.nodes[name] = ns
        in_ns(ns, "ip", "link", "set", "lo", "up")
        return ns

    @property
    def node(self) -> str:
        """The first node's namespace."""
        return next(iter(self.nodes.values()))

    def add_bridge(self, node_ns: str, name: str, mtu: int = 1500, host_ip: str = "") -> None:
        in_ns(node_ns, "ip", "link", "add", name, "type", "bridge")
        in_ns(node_ns, "ip", "link", "set", name, "mtu", str(mtu), "up")
        if host_ip:
            in_ns(node_ns, "ip", "addr", "add", f"{host_ip}/16", "dev", name)

    def link_bridges(self, ns1: str, ns2: str, bridge: str) -> None:
        """An "uplink": a veth pair between the two nodes' bridges (the cluster network)."""
        in_ns(ns1, "ip", "link", "add", "nwtup", "type", "veth", "peer", "name", "nwtup", "netns", ns2)
        for ns in (ns1, ns2):
            in_ns(ns, "ip", "link", "set", "nwtup", "master", bridge, "up")

    def add_guest(self, node_ns: str, bridge: str, job: int, guest) -> str:
        ns = f"nwt{self.tag}g{job}x{guest.index}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.guest_ns[(job, guest.index)] = ns
        in_ns(node_ns, "ip", "link", "add", guest.tap, "type", "veth", "peer", "name", "eth0", "netns", ns)
        in_ns(node_ns, "ip", "link", "set", guest.tap, "master", bridge, "up")
        in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(ns, "ip", "link", "set", "eth0", "address", guest.mac, "up")
        in_ns(ns, "ip", "addr", "add", f"{guest.ip}/16", "dev", "eth0")
        return ns

    def listen(self, ns: str, port: int) -> None:
        """A TCP server in ``ns`` that accepts and closes connections until killed."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0',{port})); s.listen(16); print('up', flush=True)\n"
            "while True:\n    c,_=s.accept(); c.close()\n"
        )
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", "--", sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)


def ping(ns: str, ip: str) -> bool:
    """One echo request from namespace ``ns``; True when answered (1 s wait)."""
    return in_ns(ns, BUSYBOX, "ping", "-c", "1", "-W", "1", ip, check=False).returncode == 0


def connects(ns: str, ip: str, port: int) -> bool:
    """A TCP connection from ``ns`` to ip:port completes within 2 s."""
    code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=2).close()"
    return in_ns(ns, sys.executable, "-c", code, check=False).returncode == 0


def ping_from(ns: str, source: str, ip: str) -> bool:
    """One echo request from ``ns`` with source address ``source``."""
    return in_ns(ns, BUSYBOX, "ping", "-c", "1", "-W", "1", "-I", source, ip, check=False).returncode == 0


def forget_neighbours(*namespaces: str) -> None:
    for ns in namespaces:
        in_ns(ns, "ip", "neigh", "flush", "all")


@pytest.fixture()
def bed():
    testbed = Bed()
    try:
        yield testbed
    finally:
        testbed.close()


@pytest.fixture()
def testbed(bed):
    """One node namespace, no bridge yet."""
    bed.add_node("n")
    return bed


def build_two_jobs(bed: Bed, node_count: int):
    """Jobs A and B with a guest on each of nodes n1 and n2.

    With ``node_count`` 1 both "nodes" share one bridge (so every tap is local); with 2 each node
    has its own bridge, host address and uplink, as on a real cluster.  Each node's host listens
    on an allowed and a closed port, guest A1 on a port of its own.
    """
    names = ["n1", "n2"][:node_count]
    for number, name in enumerate(names, start=1):
        bed.add_node(name)
        bed.add_bridge(bed.nodes[name], SETTINGS.bridge, host_ip=f"10.231.0.{number}")
    if node_count == 2:
        bed.link_bridges(bed.nodes["n1"], bed.nodes["n2"], SETTINGS.bridge)
    networks = {}
    for job in (JOB_A, JOB_B):
        network = job_network(job, ["n1", "n2"], SETTINGS)
        networks[job] = network
        for guest in network.guests:
            node_ns = bed.nodes.get(guest.node, bed.node)
            bed.add_guest(node_ns, SETTINGS.bridge, job, guest)
    # Fresh links take a moment to pass traffic: wait (bounded) until node n1 reaches every guest.
    for job in (JOB_A, JOB_B):
        for guest in networks[job].guests:
            if not any(ping(bed.node, guest.ip) for _ in range(20)):
                raise RuntimeError(f"testbed broken: {guest.ip} never answered")
    for node_ns in bed.nodes.values():
        bed.listen(node_ns, ALLOWED_PORT)
        bed.listen(node_ns, CLOSED_PORT)
    bed.listen(bed.guest_ns[(JOB_A, 1)], GUEST_PORT)
    return networks


def observations(bed: Bed, networks) -> dict[str, bool]:
    """Every path the isolation rules decide, observed from inside the namespaces.

    Guest A0 and B0 sit on node n1, A1 and B1 on n2 (the same bridge when there is one node).
    """
    a0, a1 = bed.guest_ns[(JOB_A, 0)], bed.guest_ns[(JOB_A, 1)]
    b0 = bed.guest_ns[(JOB_B, 0)]
    ga0, ga1 = networks[JOB_A].guests
    gb0, gb1 = networks[JOB_B].guests
    host1 = bed.node
    remote_host_ip = "10.231.0.2" if len(bed.nodes) == 2 else HOST_IP
    forget_neighbours(a0, a1, b0, *bed.nodes.values())
    seen = {
        "same job": ping(a0, ga1.ip) and ping(b0, gb1.ip),
        "cross job, same node": ping(a0, gb0.ip),
        "cross job, other node": ping(a0, gb1.ip),
        "host pings guest": ping(host1, ga0.ip),
        "host connects to guest": connects(host1, ga1.ip, GUEST_PORT),
        "guest to allowed host port": connects(a0, HOST_IP, ALLOWED_PORT),
        "guest to closed host port": connects(a0, HOST_IP, CLOSED_PORT),
        "guest to closed port of other host": connects(a0, remote_host_ip, CLOSED_PORT),
        "guest pings host": ping(a0, HOST_IP),
    }
    # Cross job with ARP out of the way: a static neighbour entry, so only IPv4 frames are judged.
    in_ns(a0, "ip", "neigh", "replace", gb1.ip, "lladdr", gb1.mac, "dev", "eth0", "nud", "permanent")
    seen["cross job, static ARP"] = ping(a0, gb1.ip)
    in_ns(a0, "ip", "neigh", "del", gb1.ip, "dev", "eth0")
    # Spoofed IPv4 source: guest A0 takes a free address of its own block.
    spoofed_ip = ga0.ip.rsplit(".", 1)[0] + ".200"
    in_ns(a0, "ip", "addr", "add", f"{spoofed_ip}/16", "dev", "eth0")
    forget_neighbours(a0, a1)
    seen["spoofed IP"] = ping_from(a0, spoofed_ip, ga1.ip)
    in_ns(a0, "ip", "addr", "del", f"{spoofed_ip}/16", "dev", "eth0")
    # Spoofed MAC: guest A0 keeps its IP but changes its MAC.
    in_ns(a0, "ip", "link", "set", "eth0", "address", "52:54:00:ee:ee:01")
    forget_neighbours(a0, a1)
    seen["spoofed MAC"] = ping(a0, ga1.ip)
    in_ns(a0, "ip", "link", "set", "eth0", "address", ga0.mac)
    # Another job's address: guest B0 claims A0's IP to reach A1.
    in_ns(b0, "ip", "addr", "add", f"{ga0.ip}/16", "dev", "eth0")
    forget_neighbours(b0, a1)
    seen["other job's IP"] = ping_from(b0, ga0.ip, ga1.ip)
    in_ns(b0, "ip", "addr", "del", f"{ga0.ip}/16", "dev", "eth0")
    return seen


OPEN = {
    "same job": True,
    "cross job, same node": True,
    "cross job, other node": True,
    "host pings guest": True,
    "host connects to guest": True,
    "guest to allowed host port": True,
    "guest to closed host port": True,
    "guest to closed port of other host": True,
    "guest pings host": True,
    "cross job, static ARP": True,
    "spoofed IP": True,
    "spoofed MAC": True,
    "other job's IP": True,
}
ISOLATED = {
    **OPEN,
    "cross job, same node": False,
    "cross job, other node": False,
    "guest to closed host port": False,
    "guest to closed port of other host": False,
    "guest pings host": False,
    "cross job, static ARP": False,
    "spoofed IP": False,
    "spoofed MAC": False,
    "other job's IP": False,
}


def ruleset(ns: str) -> str:
    return in_ns(ns, "nft", "list", "ruleset").stdout.strip()


def test_isolation_between_two_jobs_on_one_bridge(bed):
    networks = build_two_jobs(bed, node_count=1)
    # Control: with no rules every path is open, so each "blocked" below is the rules' doing.
    assert observations(bed, networks) == OPEN

    undo = {job: netdev.apply_isolation(networks[job], netns=bed.node) for job in (JOB_A, JOB_B)}
    assert netdev.isolated_jobs(netns=bed.node) == [JOB_A, JOB_B]
    assert observations(bed, networks) == ISOLATED

    # Re-applying replaces the table atomically (a prolog retried) and changes nothing.
    netdev.apply_isolation(networks[JOB_A], netns=bed.node)
    assert netdev.isolated_jobs(netns=bed.node) == [JOB_A, JOB_B]

    for job in (JOB_A, JOB_B):
        undo[job]()
        undo[job]()  # idempotent
    netdev.remove_isolation(JOB_A, netns=bed.node)
    assert ruleset(bed.node) == ""
    assert observations(bed, networks) == OPEN


def test_isolation_between_two_jobs_across_two_nodes(bed):
    """Each node installs only its own guests' rules (as the prolog does), peers sit behind the uplink."""
    networks = build_two_jobs(bed, node_count=2)
    assert observations(bed, networks) == OPEN
    for node, node_ns in bed.nodes.items():
        for job in (JOB_A, JOB_B):
            netdev.apply_isolation(networks[job], node, netns=node_ns)
    assert observations(bed, networks) == ISOLATED
    for node_ns in bed.nodes.values():
        for job in (JOB_A, JOB_B):
            netdev.remove_isolation(job, netns=node_ns)
        assert ruleset(node_ns) == ""
    assert observations(bed, networks) == OPEN


def test_block_collision_is_detected(testbed):
    testbed.add_bridge(testbed.node, SETTINGS.bridge)
    first = job_network(JOB_A, ["n1"], SETTINGS)
    blocks = 2 ** (SETTINGS.block_prefix - 16) - 1
    clash = job_network(JOB_A + blocks, ["n1"], SETTINGS)
    assert clash.block == first.block
    netdev.apply_isolation(first, netns=testbed.node)
    with pytest.raises(NetworkError, match=rf"job {JOB_A} on this node already uses.*modulo {blocks}"):
        netdev.apply_isolation(clash, netns=testbed.node)
    assert netdev.isolated_jobs(netns=testbed.node) == [JOB_A]
    assert netdev.block_users(netns=testbed.node) == {JOB_A: ipaddress.ip_network(first.block)}
    netdev.remove_isolation(JOB_A, netns=testbed.node)
    netdev.apply_isolation(clash, netns=testbed.node)  # free again once the first job is gone
    netdev.remove_isolation(clash.job_id, netns=testbed.node)


def _race_two_prologs(node_ns: str, first, second, lock) -> list[str]:
    """Start apply_isolation for two jobs at the same instant; what each got, "ok" or "clash"."""
    barrier = threading.Barrier(2)
    outcome: dict[int, str] = {}

    def prolog(network) -> None:
        barrier.wait()
        try:
            netdev.apply_isolation(network, netns=node_ns, lock=lock)
            outcome[network.job_id] = "ok"
        except NetworkError:
            outcome[network.job_id] = "clash"
        except Exception as exc:  # reported in the assertion, not lost in the thread
            outcome[network.job_id] = repr(exc)

    threads = [threading.Thread(target=prolog, args=(network,)) for network in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for network in (first, second):
        netdev.remove_isolation(network.job_id, netns=node_ns)
    return sorted(outcome.values())


def test_block_check_and_load_hold_the_node_lock(testbed, tmp_path):
    """Two prologs of jobs sharing a block, started together: with the node's isolation lock
    exactly one installs its table and the other gets the clash, every time."""
    testbed.add_bridge(testbed.node, SETTINGS.bridge)
    blocks = 2 ** (SETTINGS.block_prefix - 16) - 1
    first = job_network(JOB_A, ["n1"], SETTINGS)
    second = job_network(JOB_A + blocks, ["n1"], SETTINGS)
    lock = (netdev.isolation_lock_path(str(tmp_path / "run")), 30.0)
    for _ in range(8):
        assert _race_two_prologs(testbed.node, first, second, lock) == ["clash", "ok"]
    assert ruleset(testbed.node) == ""


def test_isolation_none_installs_nothing(testbed):
    network = job_network(JOB_A, ["n1"], SETTINGS.model_copy(update={"isolation": "none"}))
    undo = netdev.apply_isolation(network, netns=testbed.node)
    undo()
    assert in_ns(testbed.node, "nft", "list", "ruleset").stdout.strip() == ""


def test_rendered_ruleset_passes_nft_check(testbed):
    network = job_network(4_000_000_000, [f"node{i}" for i in range(200)], SETTINGS, 8)
    netdev.validate_ruleset(netdev.render_isolation(network), netns=testbed.node)
    assert in_ns(testbed.node, "nft", "list", "ruleset").stdout.strip() == ""  # -c applied nothing


def test_check_bridge(testbed):
    with pytest.raises(NetworkError, match=r"bridge 'nwtbr0' does not exist.*network\.bridge"):
        netdev.check_bridge("nwtbr0", 1500, netns=testbed.node)
    testbed.add_bridge(testbed.node, "nwtbr0", mtu=1500)
    netdev.check_bridge("nwtbr0", 1500, netns=testbed.node)
    netdev.check_bridge("nwtbr0", 1400, netns=testbed.node)
    with pytest.raises(NetworkError, match=r"'nwtbr0' has MTU 1500, smaller than network\.mtu = 9000"):
        netdev.check_bridge("nwtbr0", 9000, netns=testbed.node)
    in_ns(testbed.node, "ip", "link", "add", "nwtveth0", "type", "veth", "peer", "name", "nwtveth1")
    with pytest.raises(NetworkError, match=r"'nwtveth0' exists but is a veth interface, not a bridge"):
        netdev.check_bridge("nwtveth0", 1500, netns=testbed.node)
    in_ns(testbed.node, "ip", "link", "set", "nwtbr0", "down")
    with pytest.raises(NetworkError, match=r"bridge 'nwtbr0' is down"):
        netdev.check_bridge("nwtbr0", 1500, netns=testbed.node)


def test_bridge_max_mtu_and_tap_check(testbed):
    testbed.add_bridge(testbed.node, "nwtbr0")
    assert netdev.bridge_max_mtu("nwtbr0", netns=testbed.node) == 65535
    in_ns(testbed.node, "ip", "link", "add", "vct5i0", "type", "veth", "peer", "name", "nwtpeer")
    in_ns(testbed.node, "ip", "link", "set", "vct5i0", "master", "nwtbr0")
    # A veth port allows less than a bare bridge: the bridge's limit is its smallest port's.
    port = json.loads(in_ns(testbed.node, "ip", "-j", "-d", "link", "show", "vct5i0").stdout)[0]
    veth_max = int(port["max_mtu"])
    assert netdev.bridge_max_mtu("nwtbr0", netns=testbed.node) == min(65535, veth_max)
    with pytest.raises(NetworkError, match=r"tap 'vct5i0' already exists"):
        netdev.check_tap_free("vct5i0", netns=testbed.node)
    netdev.check_tap_free("vct5i1", netns=testbed.node)


def test_works_in_the_current_namespace(testbed):
    """Without netns= the tools act on the caller's namespace (the prolog runs inside slurmd's)."""
    testbed.add_bridge(testbed.node, "nwtbr0")
    code = (
        "from slurm_vc import netdev\n"
        "netdev.check_bridge('nwtbr0', 1500)\n"
        "print(netdev.bridge_max_mtu('nwtbr0'))\n"
    )
    result = subprocess.run(
        [shutil.which("nsenter"), f"--net=/run/netns/{testbed.node}", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": os.pathsep.join(sys.path)},  # and no PATH, like the prolog
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "65535"
