"""Guest network through real Slurm jobs on the sandbox: permanent ARP, isolation between two jobs.

Two --vcluster jobs run at the same time: job A on node1+node2, job B on node3.  The test (root)
logs into the guests with each job's key from the node's namespace, as the host side would, and
observes with real traffic what the prolog's isolation rules allow.  The same observations made
with the rules lifted (then reinstalled exactly as the prolog does) are the control: each "blocked"
below is the rules' doing, not a broken testbed.  At the end both jobs are cancelled and no rule of
either job may remain on any node.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

pytestmark = pytest.mark.e2e

IMAGE = "tiny"
MEM = "600M"
JOB_TIMEOUT = 600
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
]  # fmt: skip


def wait_ready(sandbox, job: int) -> None:
    """Until the job runs with its prolog done on every node (= every guest ready)."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        info = sandbox.job_info(job)
        state = info.get("JobState", "")
        if state == "RUNNING" and info.get("Reason") != "Prolog":
            return
        if state not in ("PENDING", "CONFIGURING", "RUNNING"):
            break
        time.sleep(0.5)
    raise AssertionError(f"job {job} not running with ready guests: {sandbox.job_info(job)}")


class Guest:
    """One guest of a job, reached over ssh with the job key from its node's namespace."""

    def __init__(self, sandbox, job: int, node: str, nodes: list[str]):
        from slurm_vc.config import load_config
        from slurm_vc.jobenv import jobenv_dir
        from slurm_vc.network import job_network

        self.config = load_config(str(sandbox.node_config(node)))
        self.network = job_network(job, nodes, self.config.network)
        self.me = self.network.guest_on(node)
        self.node, self.job = node, job
        self.netns = sandbox.netns(node)
        self.key = str(jobenv_dir(self.config.state_dir, job) / "id_ed25519")

    @property
    def ip(self) -> str:
        return self.me.ip

    def sh(self, script: str) -> subprocess.CompletedProcess:
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", "ssh", *SSH_OPTS, "-i", self.key]
        return subprocess.run([*argv, f"root@{self.ip}", script], capture_output=True, text=True, timeout=120)

    def ok(self, script: str) -> bool:
        return self.sh(script).returncode == 0


def host_address(sandbox, node: str, bridge: str) -> str:
    """The node's own address on the guest bridge (the host block)."""
    result = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{sandbox.netns(node)}",
            "--",
            "ip",
            "-j",
            "-4",
            "addr",
            "show",
            bridge,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)[0]["addr_info"][0]["local"]


def ping(src: Guest, ip: str, source: str = "") -> bool:
    flag = f"-I {source} " if source else ""
    return src.ok(f"ping -c 1 -W 3 {flag}{ip}")


def observe(a0: Guest, a1: Guest, b0: Guest, host1: str) -> dict[str, bool]:
    """Every path the isolation decides, seen from inside the guests."""
    seen = {
        "same job, across nodes": ping(a0, a1.ip),
        "cross job": ping(a0, b0.ip),
        "guest pings its host": ping(a0, host1),
    }
    # IPv4 itself, with ARP out of the way: a static entry for B's guest in A0.
    seen["cross job, static ARP"] = a0.ok(
        f"arp -i eth0 -s {b0.ip} {b0.me.mac}; ping -c 1 -W 3 {b0.ip}; rc=$?; arp -d {b0.ip}; exit $rc"
    )
    # Spoofing runs as one command inside the guest: while A0 wears a false MAC, even its ssh
    # replies are dropped, so the restore must not wait for the ssh channel.
    free_ip = a0.network.block.rsplit(".", 1)[0] + ".200"  # in A's block, assigned to nobody
    seen["spoofed source IP"] = a0.ok(
        f"ip addr add {free_ip}/32 dev eth0; ping -c 1 -W 3 -I {free_ip} {a1.ip}; rc=$?; "
        f"ip addr del {free_ip}/32 dev eth0; exit $rc"
    )
    # A1's permanent ARP entry would send the reply to A0's real MAC, which A0's NIC then ignores:
    # point it at the false MAC for the duration, so that only the rules can make the ping fail.
    false_mac = "52:54:00:ee:ee:01"
    a1.sh(f"arp -i eth0 -s {a0.ip} {false_mac}")
    seen["spoofed MAC"] = a0.ok(
        f"ip link set eth0 address {false_mac}; ping -c 1 -W 3 {a1.ip}; rc=$?; "
        f"ip link set eth0 address {a0.me.mac}; exit $rc"
    )
    a1.sh(f"arp -i eth0 -s {a0.ip} {a0.me.mac}")
    return seen


OPEN = {
    "same job, across nodes": True,
    "cross job": True,
    "guest pings its host": True,
    "cross job, static ARP": True,
    "spoofed source IP": True,
    "spoofed MAC": True,
}
ISOLATED = {**OPEN, **{key: False for key in OPEN if key != "same job, across nodes"}}


def job_tables(sandbox, node: str) -> set[str]:
    result = subprocess.run(
        ["nsenter", f"--net=/run/netns/{sandbox.netns(node)}", "--", "nft", "list", "tables", "bridge"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("table bridge")}


def test_two_concurrent_jobs_are_isolated_and_peers_have_permanent_arp(sandbox):
    from slurm_vc import netdev

    sandbox.resume_nodes()
    b = sandbox.sbatch(
        "-N1", "-w", "node3", f"--mem={MEM}", "-t", "15", f"--vcluster={IMAGE}", "--wrap", "sleep 900"
    )
    a = sandbox.sbatch(
        "-N2", "-w", "node1,node2", f"--mem={MEM}", "-t", "15", f"--vcluster={IMAGE}", "--wrap", "sleep 900"
    )
    try:
        wait_ready(sandbox, b)
        wait_ready(sandbox, a)
        a0 = Guest(sandbox, a, "node1", ["node1", "node2"])
        a1 = Guest(sandbox, a, "node2", ["node1", "node2"])
        b0 = Guest(sandbox, b, "node3", ["node3"])
        host1 = host_address(sandbox, "node1", a0.config.network.bridge)

        # Every peer has a permanent ARP entry (flags 0x6 = complete + permanent) and an /etc/hosts line.
        arp = a0.sh("cat /proc/net/arp").stdout
        peer_line = next(line for line in arp.splitlines() if line.startswith(a1.ip + " "))
        assert peer_line.split()[2] == "0x6" and peer_line.split()[3] == a1.me.mac, arp
        hosts = a0.sh("cat /etc/hosts").stdout
        assert f"{a1.ip}" in hosts and a1.me.hostname in hosts and "127.0.1.1" not in hosts, hosts
        assert ping(a0, a1.me.hostname)  # by name

        # The prolog's rules are in place on every node: the isolated picture.
        assert {netdev.table_name(a)} <= job_tables(sandbox, "node1")
        assert {netdev.table_name(b)} <= job_tables(sandbox, "node3")
        assert observe(a0, a1, b0, host1) == ISOLATED

        # Control: lift both jobs' rules on every node; every path opens.
        for node in sandbox.nodes:
            for job in (a, b):
                netdev.remove_isolation(job, netns=sandbox.netns(node))
        assert observe(a0, a1, b0, host1) == OPEN

        # Reinstall exactly what the prologs install (each node: its own guests' taps).
        for guest in (a0, a1, b0):
            netdev.apply_isolation(guest.network, guest.node, netns=guest.netns)
        assert observe(a0, a1, b0, host1) == ISOLATED
    finally:
        sandbox.exec(["scancel", str(a), str(b)], user="root")
    for job in (a, b):
        sandbox.wait_job(job, timeout=JOB_TIMEOUT)

    # Teardown removed every rule of both jobs, on every node.
    deadline = time.monotonic() + 120
    left = {}
    while time.monotonic() < deadline:
        wanted = {netdev.table_name(a), netdev.table_name(b)}
        left = {node: job_tables(sandbox, node) & wanted for node in sandbox.nodes}
        if not any(left.values()):
            break
        time.sleep(0.5)
    assert not any(left.values()), f"isolation rules left after teardown: {left}"
