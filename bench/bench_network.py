#!/usr/bin/env python3
"""Benchmark: guest-to-guest TCP throughput across two nodes against node-to-node throughput, same run.

Testbed (built here, removed at the end; needs root):

    node n1 (netns)                                        node n2 (netns)
    guest A0 --tap vct<job>i0-- vcbr0 ==uplink veth== vcbr0 --tap vct<job>i1-- guest A1
                                host 10.232.0.1          host 10.232.0.2

Two network namespaces stand in for two cluster nodes; each has the slurm-vc bridge with a host
address in the host block and the job's isolation rules (``netdev.apply_isolation``, as the prolog
installs them), joined by a veth "uplink".  Addresses, MACs and tap names come from
``network.job_network``.  The guests are either

- ``qemu``: the tiny test guest (``guest/build-tiny-guest.sh``) started with qemu-system-x86_64 on a
  tap in its node's namespace, configured by the ``vc.*`` kernel parameters, reached over ssh with a
  throw-away key; the virtio NIC gets ``host_mtu`` = the MTU, as libvirt's ``<mtu>`` does; or
- ``netns``: a network namespace per guest plugged in by a veth carrying the guest's tap name (the
  bridge, uplink and nftables path without a hypervisor).

Tools: iperf3 everywhere (the tiny guest has no C library, so the benchmark appends iperf3 and the
libraries it links to the guest's initramfs as a second archive), and busybox ``dd | nc`` into
``nc -l | wc -c`` as a cross-check with the tools the guest already has, timed on the sender with
busybox ``time`` from connect until the receiver has read everything and closed.  Each figure is a
median over --reps runs.  MTUs: 1500 and the largest the testbed bridge allows (the smallest
max_mtu of the bridge and its ports, tap included, capped at the 65520 network.mtu accepts); the
guests boot again for each MTU, with the NIC's host_mtu set as libvirt's ``<mtu>`` does.

With ``--testbed sandbox`` it instead brings up a 2-node sandbox cluster of its own (``slurm-vc
sandbox``), runs a ``--vcluster=tiny`` job on both nodes (guests started by the Slurm prolog through
each node's libvirtd, isolation rules installed by the prolog), measures guest-to-guest against the two
nodes' hosts with dd|nc (that guest has no iperf3; iperf3 between the hosts is a tool reference), and
takes the sandbox down again.

    sudo .venv/bin/python bench/bench_network.py [--testbed namespaces|sandbox]
        [--guests qemu|netns|both] [--reps 3] [--seconds 3]
        [--tools iperf3,nc] [--isolation on|off] [--mtus 1500,9000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from slurm_vc import netdev
from slurm_vc.config import NetworkSettings
from slurm_vc.network import JobNetwork, job_network

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.232.0.0/16"  # this benchmark's own; tests use 10.231/16, the default is 10.96/12
HOST_IPS = {"n1": "10.232.0.1", "n2": "10.232.0.2"}
NO_RULES = "netns guests, isolation rules lifted"
JOBS = {"netns": 4242, "qemu": 4243}  # one job per guest kind, so both kinds run side by side
PORT = 5001
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
TIME_RE = re.compile(r"real\s+(?:(\d+)m\s*)?([0-9.]+)s")  # busybox time: "real\t0m 3.45s"
SSH_OPTS = [
    "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
]  # fmt: skip


def run(argv: list[str], check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def ns_cmd(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{ns}", "--", *argv]


class Endpoint:
    """Somewhere a shell command can run: a host namespace, a guest namespace or a QEMU guest."""

    def __init__(self, name: str, ns: str, ip: str, ssh_key: str = "", applet_prefix: str = ""):
        self.name, self.ns, self.ip, self.ssh_key = name, ns, ip, ssh_key
        self.bb = applet_prefix  # "busybox " where the applets are not on PATH by their own names

    def argv(self, script: str) -> list[str]:
        if self.ssh_key:  # a QEMU guest: ssh from its node's namespace
            return ns_cmd(self.ns, "ssh", *SSH_OPTS, "-i", self.ssh_key, f"root@{self.ip}", script)
        return ns_cmd(self.ns, BUSYBOX, "sh", "-c", script)


def transfer(sender: Endpoint, receiver: Endpoint, nbytes: int) -> float:
    """Send about ``nbytes`` over one TCP connection with dd | nc; bytes per second.

    Timed on the sender by busybox ``time`` (10 ms resolution; transfers last seconds) from connect
    until the receiver closed, i.e. until it had read every byte (nc half-closes when its stdin
    ends and exits when the peer closes).  The receiver counts the bytes it got.
    """
    rb, sb = receiver.bb, sender.bb
    # The listener's stdin is our pipe, held open: at EOF on stdin nc would half-close the
    # connection and the sender would stop early (a background job's stdin is /dev/null otherwise).
    listen = (
        f"exec 3<&0; {rb}nc -l -p {PORT} <&3 | {rb}wc -c & "
        f"while ! {rb}netstat -ltn | {rb}grep -q ':{PORT} '; do {rb}sleep 0.05; done; echo listening; wait"
    )
    server = subprocess.Popen(
        receiver.argv(listen),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        if line != "listening":
            raise RuntimeError(f"receiver {receiver.name} did not start: {line} {server.stderr.read()}")
        count = max(1, nbytes // 65536)
        pipeline = f"{sb}dd if=/dev/zero bs=65536 count={count} 2>/dev/null | {sb}nc {receiver.ip} {PORT}"
        result = run(sender.argv(f"{sb}time {sb}sh -c '{pipeline}' 2>&1"), check=False, timeout=600)
        received, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    output = result.stdout + result.stderr
    match = TIME_RE.search(output)
    if result.returncode != 0 or not match or received.strip() != str(count * 65536):
        raise RuntimeError(
            f"transfer {sender.name} -> {receiver.name} failed: sender said {output.strip()!r}, "
            f"receiver got {received.strip() or 'nothing'} of {count * 65536} bytes"
        )
    seconds = int(match.group(1) or 0) * 60 + float(match.group(2))
    return count * 65536 / max(seconds, 0.01)


def calibrate(sender: Endpoint, receiver: Endpoint, seconds: float) -> int:
    """Bytes for one dd|nc transfer of about ``seconds`` (one 16 MiB probe; also warms ARP)."""
    rate = transfer(sender, receiver, 16 << 20)
    return int(min(max(rate * seconds, 16 << 20), 16 << 30))


def iperf3(client: Endpoint, server: Endpoint, seconds: float) -> float:
    """One iperf3 TCP test (``seconds`` long) from ``client`` to ``server``; bytes/s received."""
    port = str(PORT + 1)
    pidfile = f"/tmp/slurm-vc-bench-iperf3-{uuid.uuid4().hex[:8]}.pid"
    # -1: serve one test and exit; -D: daemonise, so the command returns once it listens.
    run(server.argv(f"iperf3 -s -1 -D -p {port} -I {pidfile}"))
    try:
        for _ in range(100):
            result = run(
                client.argv(f"iperf3 -c {server.ip} -p {port} -t {max(1, round(seconds))} -J"), check=False
            )
            report = json.loads(result.stdout or "{}")
            if result.returncode == 0 and "sum_received" in report.get("end", {}):
                return report["end"]["sum_received"]["bits_per_second"] / 8
            if "error" in report and "connect" not in report["error"]:
                raise RuntimeError(f"iperf3 {client.name} -> {server.name}: {report['error']}")
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 {client.name} -> {server.name} never connected")
    finally:
        # Normally gone already (-1); after a failure, end exactly the server this call started.
        run(
            server.argv(f"[ -f {pidfile} ] && kill $(cat {pidfile}) 2>/dev/null; rm -f {pidfile}"),
            check=False,
        )


class Testbed:
    """Two node namespaces with bridges and an uplink; each guest kind is one job, guests added per MTU."""

    def __init__(self, workdir: str):
        self.tag = uuid.uuid4().hex[:5]
        self.workdir = workdir
        self.nodes = {name: f"nwb{self.tag}{name}" for name in ("n1", "n2")}
        self.settings = NetworkSettings(bridge="vcbr0", subnet=SUBNET, block_prefix=24, mtu=1500)
        self.networks: dict[str, JobNetwork] = {
            kind: job_network(job, ["n1", "n2"], self.settings) for kind, job in JOBS.items()
        }
        self.guest_ns: list[str] = []
        self.qemus: list[subprocess.Popen] = []
        for node, ns in self.nodes.items():
            run(["ip", "netns", "add", ns])
            run(ns_cmd(ns, "ip", "link", "set", "lo", "up"))
            run(
                ns_cmd(
                    ns, "ip", "link", "add", "vcbr0", "type", "bridge", "stp_state", "0", "forward_delay", "0"
                )
            )
            run(ns_cmd(ns, "ip", "addr", "add", f"{HOST_IPS[node]}/16", "dev", "vcbr0"))
            run(ns_cmd(ns, "ip", "link", "set", "vcbr0", "up"))
        n1, n2 = self.nodes["n1"], self.nodes["n2"]
        run(ns_cmd(n1, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", n2))
        for ns in (n1, n2):
            run(ns_cmd(ns, "ip", "link", "set", "uplink", "master", "vcbr0", "up"))
        self.hosts = {
            node: Endpoint(f"host {node}", ns, HOST_IPS[node], applet_prefix=f"{BUSYBOX} ")
            for node, ns in self.nodes.items()
        }

    def set_mtu(self, mtu: int) -> None:
        for ns in self.nodes.values():
            for link in ("uplink", "vcbr0"):
                run(ns_cmd(ns, "ip", "link", "set", link, "mtu", str(mtu)))

    def largest_mtu(self) -> int:
        """The testbed bridge's limit with a tap plugged in, capped at what network.mtu accepts."""
        ns = self.nodes["n1"]
        run(ns_cmd(ns, "ip", "tuntap", "add", "dev", "vctprobe", "mode", "tap"))
        run(ns_cmd(ns, "ip", "link", "set", "vctprobe", "master", "vcbr0"))
        try:
            return min(netdev.bridge_max_mtu("vcbr0", netns=ns), 65520)
        finally:
            run(ns_cmd(ns, "ip", "link", "del", "vctprobe"))

    def lift_rules(self, kind: str) -> None:
        for ns in self.nodes.values():
            netdev.remove_isolation(JOBS[kind], netns=ns)

    def isolate(self) -> None:
        for node, ns in self.nodes.items():
            for network in self.networks.values():
                netdev.apply_isolation(network, node, netns=ns)

    # --- guests
    def netns_guests(self, mtu: int) -> list[Endpoint]:
        network = self.networks["netns"]
        guests = []
        for guest in network.guests:
            ns = f"nwb{self.tag}g{guest.index}"
            node_ns = self.nodes[guest.node]
            run(["ip", "netns", "add", ns])
            self.guest_ns.append(ns)
            run(
                ns_cmd(
                    node_ns,
                    "ip",
                    "link",
                    "add",
                    guest.tap,
                    "mtu",
                    str(mtu),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
            )
            run(ns_cmd(node_ns, "ip", "link", "set", guest.tap, "master", "vcbr0", "up"))
            run(ns_cmd(ns, "ip", "link", "set", "lo", "up"))
            run(ns_cmd(ns, "ip", "link", "set", "eth0", "address", guest.mac, "mtu", str(mtu), "up"))
            run(ns_cmd(ns, "ip", "addr", "add", f"{guest.ip}/{network.prefixlen}", "dev", "eth0"))
            guests.append(
                Endpoint(f"netns guest {guest.hostname}", ns, guest.ip, applet_prefix=f"{BUSYBOX} ")
            )
        return guests

    def qemu_guests(self, mtu: int, kernel: str, initrd: str, key: str) -> list[Endpoint]:
        pub = Path(key + ".pub").read_text().split()
        network = self.networks["qemu"]
        guests = []
        for guest in network.guests:
            node_ns = self.nodes[guest.node]
            run(ns_cmd(node_ns, "ip", "tuntap", "add", "dev", guest.tap, "mode", "tap"))
            run(ns_cmd(node_ns, "ip", "link", "set", guest.tap, "mtu", str(mtu), "master", "vcbr0", "up"))
            peers = [p for p in network.guests if p is not guest]
            params = [
                "console=ttyS0", "quiet",
                f"vc.hostname={guest.hostname}", f"vc.ip={guest.ip}/{network.prefixlen}",
                f"vc.mac={guest.mac}", f"vc.mtu={mtu}", "vc.user=root",
                "vc.hosts=" + ",".join(f"{g.ip}:{g.hostname}" for g in network.guests),
                "vc.arp=" + ",".join(f"{p.ip}@{p.mac}" for p in peers),
                f"vc.keys={pub[0]}:{pub[1]}",
            ]  # fmt: skip
            log = os.path.join(self.workdir, f"{guest.hostname}-{mtu}.log")
            argv = ns_cmd(
                node_ns, "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max",
                "-smp", "1", "-m", "256",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", f"file:{log}",
                "-kernel", kernel, "-initrd", initrd, "-append", " ".join(params),
                "-netdev", f"tap,id=n0,ifname={guest.tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={guest.mac},host_mtu={mtu}",
            )  # fmt: skip
            self.qemus.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            guests.append((Endpoint(f"qemu guest {guest.hostname}", node_ns, guest.ip, ssh_key=key), log))
        deadline = time.monotonic() + 300
        for endpoint, log in guests:
            while not (os.path.exists(log) and "SLURM-VC-READY" in Path(log).read_text(errors="replace")):
                if time.monotonic() > deadline or any(q.poll() is not None for q in self.qemus):
                    raise RuntimeError(f"{endpoint.name} did not become ready; console: {log}")
                time.sleep(0.2)
            for _ in range(100):  # dropbear starts just before the ready line
                if run(endpoint.argv("true"), check=False).returncode == 0:
                    break
                time.sleep(0.3)
        return [endpoint for endpoint, _ in guests]

    def remove_guests(self) -> None:
        for proc in self.qemus:
            proc.kill()
            proc.wait()
        self.qemus.clear()
        for ns in self.guest_ns:
            run(["ip", "netns", "del", ns], check=False)
        self.guest_ns.clear()
        for network in self.networks.values():
            for guest in network.guests:
                run(ns_cmd(self.nodes[guest.node], "ip", "link", "del", guest.tap), check=False)

    def close(self) -> None:
        self.remove_guests()
        for ns in self.nodes.values():
            for job in JOBS.values():
                netdev.remove_isolation(job, netns=ns)
            run(["ip", "netns", "del", ns], check=False)


def tiny_guest(workdir: str) -> tuple[str, str]:
    """The tiny guest's kernel, and its initramfs with iperf3 appended (benchmark only).

    The tiny guest has no C library, so iperf3 comes with the libraries ``ldd`` names, packed as a
    second newc archive appended to the initramfs (the kernel unpacks concatenated archives in
    order).  The guest image itself is built into guest/out if missing (the build is cached).
    """
    out = ROOT / "guest" / "out"
    if not (out / "vmlinuz").exists() or not (out / "initrd.img").exists():
        run(["sh", str(ROOT / "guest" / "build-tiny-guest.sh"), str(out)], timeout=600)
    stage = Path(workdir, "iperf3-root")
    binary = shutil.which("iperf3") or "/usr/bin/iperf3"
    files = [binary] + re.findall(r"(/\S+) \(0x", run(["ldd", binary]).stdout)
    for name in files:
        # /usr/bin is a symlink to /bin in the tiny guest: a "usr/bin" directory entry would not land.
        target = stage / ("bin/iperf3" if name == binary else name.lstrip("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(name, target)  # follows symlinks: the file under the name the loader asks for
        target.chmod(0o755)
    (stage / "tmp").mkdir(exist_ok=True)
    (stage / "tmp").chmod(0o1777)  # iperf3 maps its buffer from a file in /tmp
    listing = "\n".join(str(p.relative_to(stage)) for p in sorted(stage.rglob("*"))) + "\n"
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=stage, input=listing.encode(),
        capture_output=True, check=True,
    )  # fmt: skip
    initrd = Path(workdir, "initrd-iperf3.img")
    with open(initrd, "wb") as combined:
        base = (out / "initrd.img").read_bytes()
        # An uncompressed archive must start 4-byte aligned; the kernel skips zero padding.
        combined.write(base + b"\0" * (-len(base) % 4))
        combined.write(archive.stdout)
    return str(out / "vmlinuz"), str(initrd)


def fmt_rate(rate: float) -> str:
    return f"{rate * 8 / 1e9:.2f} Gbit/s" if rate * 8 >= 1e9 else f"{rate * 8 / 1e6:.0f} Mbit/s"


def interleaved(paths: dict, tools: list[str], reps: int, seconds: float) -> dict[tuple[str, str], float]:
    """Median rate per (path, tool); rounds interleave the paths so outside load hits them alike."""
    sizes = {name: calibrate(*pair, seconds) for name, pair in paths.items()} if "nc" in tools else {}
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):
        for name, (sender, receiver) in paths.items():
            for tool in tools:
                if tool == "iperf3":
                    rate = iperf3(sender, receiver, seconds)
                else:
                    rate = transfer(sender, receiver, sizes[name])
                samples.setdefault((name, tool), []).append(rate)
    return {key: statistics.median(values) for key, values in samples.items()}


def slurm_vc(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "slurm_vc", *argv], timeout=timeout)


def sandbox_rows(mtu: int, reps: int, seconds: float) -> list[tuple]:
    """Guest-to-guest on a real --vcluster job of a 2-node sandbox cluster vs its two nodes' hosts.

    The guests are the tiny image started by the Slurm prolog through each node's libvirtd, with the
    prolog's isolation rules; they have busybox but no iperf3, so the comparison uses dd|nc, and
    iperf3 between the hosts is given as a reference.
    """
    from slurm_vc.config import load_config
    from slurm_vc.jobenv import jobenv_dir

    name = f"nwb{os.getpid() % 100000}"[:8]
    base = Path("/var/lib/slurm-vc-sandbox") / name
    nodes = ["node1", "node2"]
    slurm_vc("sandbox", "up", "--name", name, "--nodes", "2", "--mtu", str(mtu), "--guest-mtu", str(mtu))
    job = 0
    try:
        submit = slurm_vc("sandbox", "exec", "--name", name, "--", "sbatch", "--parsable", "-N2",
                          "--vcluster=tiny", "--wrap", "sleep 1800")  # fmt: skip
        job = int(submit.stdout.strip().split(";")[0])
        print(f"sandbox {name}: job {job}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 900
        while True:  # RUNNING with the prolog done on every node = every guest is ready
            info = slurm_vc("sandbox", "exec", "--name", name, "--user", "root", "--",
                            "scontrol", "show", "job", "-o", str(job)).stdout  # fmt: skip
            state = re.search(r"JobState=(\S+)", info).group(1)
            if state == "RUNNING" and "Reason=Prolog" not in info:
                break
            if state not in ("PENDING", "CONFIGURING", "RUNNING") or time.monotonic() > deadline:
                output = Path(os.path.expanduser("~vcuser"), f"slurm-{job}.out")
                tail = output.read_text()[-2000:] if output.exists() else ""
                raise RuntimeError(f"job {job} never ran ({state}): {info.strip()}\njob output: {tail}")
            time.sleep(1)
        hosts, guests = {}, {}
        for node in nodes:
            config = load_config(str(base / "etc" / f"vcluster-{node}.toml"))
            netns = f"{name}-{node}"
            addresses = json.loads(
                run(ns_cmd(netns, "ip", "-j", "-4", "addr", "show", "dev", config.network.bridge)).stdout
            )
            host_ip = addresses[0]["addr_info"][0]["local"]
            hosts[node] = Endpoint(f"host {node}", netns, host_ip, applet_prefix=f"{BUSYBOX} ")
            network = job_network(job, nodes, config.network)
            key = jobenv_dir(config.state_dir, job) / "id_ed25519"
            guests[node] = Endpoint(f"guest on {node}", netns, network.guest_on(node).ip, ssh_key=str(key))
            # Where the guest's vCPU sits explains much of a TCG guest's rate: say it.
            uri = config.host.libvirt_uri
            pins = run(["virsh", "-c", uri, "vcpupin", f"vc-{job}-{node}"], check=False).stdout.split()
            emulator = run(
                ["virsh", "-c", uri, "emulatorpin", f"vc-{job}-{node}"], check=False
            ).stdout.split()
            print(f"{node}: guest vCPU pins {pins[-2:]}, emulator pins {emulator[-2:]}", file=sys.stderr)
        paths = {
            "host node1 -> host node2 (baseline)": (hosts["node1"], hosts["node2"]),
            "guest node1 -> guest node2 (Slurm job)": (guests["node1"], guests["node2"]),
        }
        rates = interleaved(paths, ["nc"], reps, seconds)
        reference = statistics.median(iperf3(hosts["node1"], hosts["node2"], seconds) for _ in range(reps))
    finally:
        if job:
            slurm_vc("sandbox", "exec", "--name", name, "--user", "root", "--", "scancel", str(job))
        slurm_vc("sandbox", "down", "--name", name, "--purge-logs")
        if job:  # the job's output file in the sandbox user's home (the cancel message)
            Path(os.path.expanduser("~vcuser"), f"slurm-{job}.out").unlink(missing_ok=True)
    base_rate = rates[(next(iter(paths)), "nc")]
    rows = [(mtu, path, "nc", rates[(path, "nc")], rates[(path, "nc")] / base_rate) for path in paths]
    rows.append((mtu, "host node1 -> host node2 (tool reference)", "iperf3", reference, None))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--testbed",
        choices=["namespaces", "sandbox"],
        default="namespaces",
        help="namespaces: QEMU/netns guests on namespace nodes built here; "
        "sandbox: a --vcluster job on a 2-node sandbox cluster (tiny guests via Slurm and libvirt)",
    )
    parser.add_argument("--guests", choices=["qemu", "netns", "both"], default="both")
    parser.add_argument("--tools", default="iperf3,nc", help="iperf3 and/or nc (busybox dd | nc)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of one transfer")
    parser.add_argument("--isolation", choices=["on", "off"], default="on", help="the job's nftables rules")
    parser.add_argument("--mtus", default="", help="comma-separated MTUs (default: 1500 and the largest)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_network: needs root (namespaces, bridges, nftables)", file=sys.stderr)
        return 2
    kinds = ["netns", "qemu"] if args.guests == "both" else [args.guests]
    tools = [tool for tool in args.tools.split(",") if tool]

    rows = []
    if args.testbed == "sandbox":
        for mtu in [int(m) for m in args.mtus.split(",")] if args.mtus else [1500, 65520]:
            rows += sandbox_rows(mtu, args.reps, args.seconds)
            print(f"MTU {mtu} done", file=sys.stderr, flush=True)
        print_rows(rows, f"sandbox cluster, medians of {args.reps} x {args.seconds:g} s")
        return 0
    with tempfile.TemporaryDirectory(prefix="slurm-vc-bench-net-") as workdir:
        bed = Testbed(workdir)
        try:
            if args.isolation == "on":
                bed.isolate()
            mtus = [int(m) for m in args.mtus.split(",")] if args.mtus else [1500, bed.largest_mtu()]
            if "qemu" in kinds:
                key = os.path.join(workdir, "id_ed25519")
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
                kernel, initrd = tiny_guest(workdir)
            for mtu in mtus:
                bed.set_mtu(mtu)
                paths = {"host n1 -> host n2 (baseline)": (bed.hosts["n1"], bed.hosts["n2"])}
                for kind in kinds:
                    guests = (
                        bed.netns_guests(mtu)
                        if kind == "netns"
                        else bed.qemu_guests(mtu, kernel, initrd, key)
                    )
                    paths[f"{kind} guest n1 -> {kind} guest n2"] = (guests[0], guests[1])
                    if kind == "netns" and args.isolation == "on":
                        # The same guests with their job's rules lifted for the measurement: the
                        # cost of the isolation rules themselves, in the same rounds.
                        paths[NO_RULES] = (guests[0], guests[1])
                # Rounds interleave the paths, so load from elsewhere on the machine hits them alike.
                sizes = (
                    {name: calibrate(*pair, args.seconds) for name, pair in paths.items()}
                    if "nc" in tools
                    else {}
                )
                samples: dict[tuple[str, str], list[float]] = {}
                for _ in range(args.reps):
                    for name, (sender, receiver) in paths.items():
                        if name == NO_RULES:
                            bed.lift_rules("netns")
                        for tool in tools:
                            if tool == "iperf3":
                                rate = iperf3(sender, receiver, args.seconds)
                            else:
                                rate = transfer(sender, receiver, sizes[name])
                            samples.setdefault((name, tool), []).append(rate)
                        if name == NO_RULES:
                            bed.isolate()
                bed.remove_guests()
                for tool in tools:
                    base = statistics.median(samples[(next(iter(paths)), tool)])
                    for name in paths:
                        rate = statistics.median(samples[(name, tool)])
                        rows.append((mtu, name, tool, rate, rate / base))
                print(f"MTU {mtu} done", file=sys.stderr, flush=True)
        finally:
            bed.close()
    print_rows(
        rows,
        f"median of {args.reps} x {args.seconds:g} s; isolation rules {args.isolation}; "
        "qemu = tiny guest (TCG), netns = namespace on a veth",
    )
    return 0


def print_rows(rows: list[tuple], note: str) -> None:
    print(f"\n{os.cpu_count()} CPUs, kernel {os.uname().release}; {note}\n")
    print("| MTU   | path                                      | tool   | throughput   | vs host |")
    print("|-------|-------------------------------------------|--------|--------------|---------|")
    for mtu, path, tool, rate, ratio in rows:
        shown = f"{ratio:>6.3f}x" if ratio is not None else "     - "
        print(f"| {mtu:<5} | {path:<41} | {tool:<6} | {fmt_rate(rate):<12} | {shown} |")


if __name__ == "__main__":
    sys.exit(main())
