"""Pure network table: addressing, names, /etc/hosts, ARP, hostfiles, and the isolation ruleset text."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess

import pytest

from slurm_vc import netdev
from slurm_vc.config import NetworkSettings, config_from_mapping
from slurm_vc.errors import ConfigError, NetworkError, PlacementError, SlurmError, UsageError
from slurm_vc.network import (
    IFNAMSIZ,
    JobNetwork,
    arp_entries,
    block_count,
    host_block,
    hostfile,
    hosts_file,
    hosts_lines,
    job_block,
    job_block_count,
    job_network,
    mac_for_ip,
    max_guests_per_job,
    tap_name,
)

DEFAULT = NetworkSettings()
SMALL = NetworkSettings(subnet="10.20.0.0/16", block_prefix=24)
NODES = ["node1", "node2", "node3"]
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


# ----------------------------------------------------------------------------- addressing


def test_default_scheme_numbers():
    assert block_count(DEFAULT) == 4096
    assert job_block_count(DEFAULT) == 4095
    assert max_guests_per_job(DEFAULT) == 254
    assert host_block(DEFAULT) == ipaddress.ip_network("10.96.0.0/24")
    # job 1234 -> block 1 + 1234 mod 4095 = 1235 -> 10.96.0.0 + 1235 * 256
    assert job_block(1234, DEFAULT) == ipaddress.ip_network("10.100.211.0/24")


def test_guest_table_for_a_job():
    net = job_network(7, NODES, SMALL, {"node1": 4, "node2": 2, "node3": 1})
    assert isinstance(net, JobNetwork)
    assert net.block == "10.20.8.0/24" and net.subnet == "10.20.0.0/16" and net.prefixlen == 16
    assert net.netmask == "255.255.0.0" and net.host_block == "10.20.0.0/24"
    assert [
        (g.index, g.node, g.hostname, g.fqdn, g.ip, g.mac, g.tap, g.domain_name, g.vcpus) for g in net.guests
    ] == [
        (0, "node1", "vc7-0", "vc7-0.vc", "10.20.8.1", "52:54:00:14:08:01", "vct7i0", "vc-7-node1", 4),
        (1, "node2", "vc7-1", "vc7-1.vc", "10.20.8.2", "52:54:00:14:08:02", "vct7i1", "vc-7-node2", 2),
        (2, "node3", "vc7-2", "vc7-2.vc", "10.20.8.3", "52:54:00:14:08:03", "vct7i2", "vc-7-node3", 1),
    ]
    assert net.guest_on("node2").ip == "10.20.8.2"
    assert [g.node for g in net.peers_of("node2")] == ["node1", "node3"]
    with pytest.raises(KeyError):
        net.guest_on("node9")


def test_every_node_computes_the_same_table():
    """The table depends only on job id, node list and settings: no node-local input at all."""
    tables = [job_network(99, list(NODES), NetworkSettings(**DEFAULT.model_dump())) for _ in range(3)]
    assert tables[0] == tables[1] == tables[2]


def test_guest_order_follows_the_node_list():
    forward = job_network(5, NODES, SMALL)
    backward = job_network(5, list(reversed(NODES)), SMALL)
    assert [g.node for g in forward.guests] == NODES
    assert forward.guest_on("node1").ip == "10.20.6.1"
    assert backward.guest_on("node1").ip == "10.20.6.3"  # order matters: Slurm gives every node the same list


def test_consecutive_jobs_never_share_a_block_and_never_get_the_host_block():
    count = job_block_count(SMALL)  # 255
    first = 1_000_000
    blocks = [job_block(job, SMALL) for job in range(first, first + count)]
    assert len(set(blocks)) == count
    assert host_block(SMALL) not in blocks
    subnet = ipaddress.ip_network(SMALL.subnet)
    assert all(block.subnet_of(subnet) for block in blocks)


def test_jobs_share_a_block_only_when_congruent_modulo_the_block_count():
    count = job_block_count(SMALL)
    assert job_block(3, SMALL) == job_block(3 + count, SMALL) == job_block(3 + 7 * count, SMALL)
    assert job_block(3, SMALL) != job_block(4, SMALL)


def test_concurrent_jobs_get_disjoint_addresses_and_macs():
    ips, macs, taps = set(), set(), set()
    for job in range(500, 500 + job_block_count(SMALL)):
        net = job_network(job, [f"n{i}" for i in range(4)], SMALL)
        for guest in net.guests:
            ips.add(guest.ip)
            macs.add(guest.mac)
            taps.add(guest.tap)
    assert len(ips) == len(macs) == len(taps) == 4 * job_block_count(SMALL)


def test_block_boundaries_and_the_guest_limit():
    settings = NetworkSettings(subnet="10.30.0.0/16", block_prefix=28)  # 14 guests per job
    assert max_guests_per_job(settings) == 14
    net = job_network(2, [f"n{i}" for i in range(14)], settings)
    block = ipaddress.ip_network(net.block)
    addresses = [ipaddress.ip_address(g.ip) for g in net.guests]
    assert block.network_address not in addresses and block.broadcast_address not in addresses
    assert addresses == list(block.hosts())
    with pytest.raises(PlacementError, match=r"15 nodes.*at most 14 guests.*block_prefix = 28"):
        job_network(2, [f"n{i}" for i in range(15)], settings)


def test_macs_are_valid_unicast_local_and_unique_across_a_slash8():
    settings = NetworkSettings(subnet="10.0.0.0/8", block_prefix=24, mac_prefix="52:54:00")
    seen = {}
    for job in (0, 1, 65533, 65534, 123456, 9_999_999):
        for guest in job_network(job, [f"n{i}" for i in range(254)], settings).guests:
            assert MAC_RE.match(guest.mac)
            first = int(guest.mac[:2], 16)
            assert first & 1 == 0  # unicast
            assert first & 2 == 2  # locally administered (52:54:00 is)
            assert seen.setdefault(guest.mac, guest.ip) == guest.ip
    assert mac_for_ip("10.255.254.253", "02:AB:cd") == "02:ab:cd:ff:fe:fd"
    assert mac_for_ip("192.168.1.2", "52:54:00") == "52:54:00:a8:01:02"


def test_tap_names_fit_ifnamsiz_and_stay_unique():
    assert tap_name(7, 0) == "vct7i0"
    assert tap_name(12345678, 999) == "vct12345678i999"  # exactly 15
    long_names = {tap_name(4_294_967_295 - job, index) for job in range(50) for index in range(50)}
    assert len(long_names) == 2500
    for name in long_names | {tap_name(7, 0)}:
        assert len(name) <= IFNAMSIZ and name.startswith("vct")
        assert re.match(r"^[a-z0-9]+$", name)


def test_hostname_format_fields_and_errors():
    # underscores are not valid in host names
    with pytest.raises(ConfigError, match=r"hostname_format .*'j3-node_a'.*not a valid host name"):
        job_network(3, ["Node_A"], NetworkSettings(hostname_format="j{job}-{node}"))
    ok = job_network(3, ["NodeA", "nodeb"], NetworkSettings(hostname_format="vm-{node}", domain=""))
    assert [(g.hostname, g.fqdn) for g in ok.guests] == [("vm-nodea", "vm-nodea"), ("vm-nodeb", "vm-nodeb")]
    with pytest.raises(ConfigError, match=r"unknown field\(s\) 'user'"):  # also past the config check
        job_network(3, ["n1"], NetworkSettings.model_construct(hostname_format="{user}-{index}"))
    with pytest.raises(ConfigError, match=r"same host name"):
        job_network(3, ["n1", "n2"], NetworkSettings(hostname_format="vc{job}"))


def test_bad_node_lists_and_vcpus():
    with pytest.raises(SlurmError, match="empty node list"):
        job_network(1, [], SMALL)
    with pytest.raises(SlurmError, match="names n1 more than once"):
        job_network(1, ["n1", "n2", "n1"], SMALL)
    with pytest.raises(SlurmError, match="no vCPU count for node n2"):
        job_network(1, ["n1", "n2"], SMALL, {"n1": 2})
    with pytest.raises(SlurmError, match="0 vCPUs"):
        job_network(1, ["n1"], SMALL, 0)
    with pytest.raises(SlurmError, match="negative"):
        job_network(-1, ["n1"], SMALL)


def test_bad_allowed_ports_and_block_prefix():
    with pytest.raises(ConfigError, match=r"network.allowed_host_ports.*TCP ports are 1-65535, got 0, 70000"):
        config_from_mapping({"network": {"allowed_host_ports": [22, 0, 70000]}})
    with pytest.raises(ConfigError, match=r"allowed_host_ports: \[0, 70000\]"):  # also past the config check
        job_network(1, ["n1"], NetworkSettings.model_construct(allowed_host_ports=[22, 0, 70000]))
    with pytest.raises(ValueError, match="block_prefix must be longer"):
        NetworkSettings(subnet="10.0.0.0/24", block_prefix=24)


# ----------------------------------------------------------------------------- hosts, ARP, hostfiles


def test_hosts_lines_and_file():
    net = job_network(7, NODES, SMALL)
    assert hosts_lines(net) == [
        "10.20.8.1\tvc7-0.vc vc7-0",
        "10.20.8.2\tvc7-1.vc vc7-1",
        "10.20.8.3\tvc7-2.vc vc7-2",
    ]
    text = hosts_file(net)
    assert text.splitlines()[1] == "127.0.0.1\tlocalhost"
    assert "127.0.1.1" not in text  # MPI would advertise loopback
    assert all(line in text.splitlines() for line in hosts_lines(net))
    assert text.endswith("\n")


def test_arp_entries_cover_every_peer():
    net = job_network(7, NODES, SMALL)
    assert arp_entries(net, "node2") == [
        ("10.20.8.1", "52:54:00:14:08:01"),
        ("10.20.8.3", "52:54:00:14:08:03"),
    ]
    assert len(arp_entries(net)) == 3


def test_hostfiles_use_vcpus_as_slots():
    net = job_network(7, NODES, SMALL, {"node1": 4, "node2": 2, "node3": 1})
    assert hostfile(net, "openmpi") == "vc7-0 slots=4\nvc7-1 slots=2\nvc7-2 slots=1\n"
    assert hostfile(net, "mpich") == "vc7-0:4\nvc7-1:2\nvc7-2:1\n"
    assert hostfile(net, "spark") == "vc7-0\nvc7-1\nvc7-2\n"
    assert hostfile(net, "plain") == "vc7-0\nvc7-1\nvc7-2\n"
    with pytest.raises(UsageError, match="unknown hostfile format 'slurm'"):
        hostfile(net, "slurm")


# ----------------------------------------------------------------------------- isolation ruleset text


def _set_elements(script: str, name: str) -> str:
    match = re.search(rf"set {name} {{[^}}]*?(elements = {{ (?P<elements>[^}}]*) }})?\s*}}", script)
    assert match, f"set {name} missing"
    return match.group("elements") or ""


def test_ruleset_names_the_job_its_block_taps_and_addresses():
    net = job_network(7, NODES, SMALL.model_copy(update={"allowed_host_ports": [2049, 22]}))
    script = netdev.render_isolation(net)
    assert script.count("table bridge slurm_vc_7") == 3  # add, delete, define: one atomic replace
    assert "delete table bridge slurm_vc_7\n" in script
    assert _set_elements(script, "job_block") == "10.20.8.0/24"
    assert _set_elements(script, "host_block") == "10.20.0.0/24"
    assert _set_elements(script, "taps") == '"vct7i0", "vct7i1", "vct7i2"'
    assert '"vct7i1" . 52:54:00:14:08:02' in _set_elements(script, "tap_mac")
    assert '"vct7i2" . 10.20.8.3' in _set_elements(script, "tap_ip")
    assert _set_elements(script, "host_ports") == "22, 2049"
    assert "th dport @host_ports accept" in script


def test_ruleset_for_one_node_names_only_its_tap_but_all_job_macs():
    net = job_network(7, NODES, SMALL)
    script = netdev.render_isolation(net, "node2")
    assert _set_elements(script, "taps") == '"vct7i1"'
    assert _set_elements(script, "tap_ip") == '"vct7i1" . 10.20.8.2'
    assert _set_elements(script, "job_macs").count("52:54:00:") == 3
    assert _set_elements(script, "host_ports") == ""
    assert "@host_ports" not in script  # no allowed ports: no rule naming the empty set
    with pytest.raises(NetworkError, match="node9 runs no guest of job 7"):
        netdev.render_isolation(net, "node9")


def _nft_check_command():
    """``nft -c`` needs netlink: run it in a throw-away user+network namespace (no root needed)."""
    nft, unshare = shutil.which("nft"), shutil.which("unshare")
    if not nft or not unshare:
        return None
    command = [unshare, "--user", "--map-root-user", "--net", nft, "-c", "-f", "-"]
    probe = "table bridge t {\n chain c {\n type filter hook input priority filter;\n accept\n }\n}\n"
    try:
        result = subprocess.run(command, input=probe, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return command if result.returncode == 0 else None


@pytest.mark.parametrize("node", [None, "node1"])
@pytest.mark.parametrize("ports", [[], [22, 111, 2049]])
def test_ruleset_is_accepted_by_nft(node, ports):
    command = _nft_check_command()
    if command is None:
        pytest.skip("nft or unprivileged namespaces unavailable (the integration tests load it for real)")
    net = job_network(4_000_000_000, NODES, SMALL.model_copy(update={"allowed_host_ports": ports}))
    result = subprocess.run(
        command, input=netdev.render_isolation(net, node), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    # and a broken script is rejected, so the check above can fail
    broken = subprocess.run(
        command, input="table bridge x { chain c { nonsense } }\n", capture_output=True, text=True
    )
    assert broken.returncode != 0


# ------------------------------------------------------------------------ host-side decisions without root


def _link(kind, mtu=1500, up=True):
    return {
        "mtu": mtu,
        "flags": ["BROADCAST", "UP"] if up else ["BROADCAST"],
        "linkinfo": {"info_kind": kind},
    }


@pytest.mark.parametrize(
    ("link", "mtu", "message"),
    [
        (None, 1500, r"bridge 'vcbr0' does not exist on this node.*network\.bridge in /etc/x\.toml"),
        (_link("veth"), 1500, r"'vcbr0' exists but is a veth interface, not a bridge"),
        (_link("bridge", up=False), 1500, r"bridge 'vcbr0' is down"),
        (_link("bridge", mtu=1500), 9000, r"MTU 1500, smaller than network\.mtu = 9000 in /etc/x\.toml"),
    ],
)
def test_check_bridge_messages(monkeypatch, link, mtu, message):
    monkeypatch.setattr(netdev, "link_info", lambda name, netns=None: link)
    with pytest.raises(NetworkError, match=message):
        netdev.check_bridge("vcbr0", mtu, source="/etc/x.toml")


def test_check_bridge_accepts_a_larger_mtu(monkeypatch):
    monkeypatch.setattr(netdev, "link_info", lambda name, netns=None: _link("bridge", mtu=9000))
    netdev.check_bridge("vcbr0", 1500)


def test_without_nft_teardown_is_a_no_op_and_apply_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(netdev, "TOOL_PATH", str(tmp_path))
    netdev.remove_isolation(7)
    assert netdev.isolated_jobs() == []
    net = job_network(7, NODES, SMALL)
    with pytest.raises(NetworkError, match=r"'nft' is not installed"):
        netdev.apply_isolation(net)
    netdev.apply_isolation(job_network(7, NODES, SMALL.model_copy(update={"isolation": "none"})))()


@pytest.mark.parametrize(
    "hostname_format,needle",
    [
        ("{user}-{index}", "unknown field(s) 'user'"),
        ("{index:>99999999999}", "without ':' or '!'"),
        ("{job!r}-{index}", "without ':' or '!'"),
        ("vc{job", "not a valid pattern"),
        ("bad name {index}", "not a valid host name"),
        ("{job.real}", "unknown field(s) 'job.real'"),
    ],
)
def test_hostname_format_is_checked_when_the_config_loads(hostname_format, needle):
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"network": {"hostname_format": hostname_format}}, source="site.toml")
    assert "network.hostname_format" in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("domain", ["bad domain!", "-x.vc", "a..b", "x" * 201])
def test_domain_must_be_dns(domain):
    with pytest.raises(ConfigError, match="network.domain.*not a DNS domain"):
        config_from_mapping({"network": {"domain": domain}})


@pytest.mark.parametrize("domain", ["", "vc", "cluster.example.org"])
def test_valid_domains(domain):
    assert config_from_mapping({"network": {"domain": domain}}).network.domain == domain


def test_delete_link_is_idempotent_and_reports_a_link_that_stays(monkeypatch):
    import subprocess

    links = {"vct1": {"ifname": "vct1"}}
    calls = []

    def run(argv, netns, *, stdin=None, check=True):
        calls.append(argv)
        if links.get("stuck"):
            return subprocess.CompletedProcess(argv, 2, "", "RTNETLINK answers: Operation not permitted")
        links.pop(argv[-1], None)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(netdev, "_run", run)
    monkeypatch.setattr(netdev, "link_info", lambda name, netns=None: links.get(name))
    netdev.delete_link("vct1")
    assert calls == [["ip", "link", "del", "vct1"]]
    netdev.delete_link("vct1")  # already gone: nothing to do
    assert len(calls) == 1
    links.update({"vct2": {"ifname": "vct2"}, "stuck": True})
    with pytest.raises(NetworkError, match="cannot delete interface vct2: RTNETLINK answers"):
        netdev.delete_link("vct2")
