"""Boot a guest with plain QEMU on a private network, and look inside it over SSH.

Used by test_tiny_guest.py and test_cloudinit_seed.py.  Each :class:`PrivateNet` is a network
namespace of its own holding a bridge (fixed MAC, address and MTU) and a tap for the guest, so
addresses and interface names never collide with other tests or testbeds.  QEMU runs inside that
namespace (nsenter execs it, so the PID we hold is QEMU's) and is ended by that PID.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SLURM_VC_TEST_CACHE", "/var/cache/slurm-vc-test"))
SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "PasswordAuthentication=no",
    "-o",
    "ConnectTimeout=5",
    "-o",
    "LogLevel=ERROR",
    # A guest that reboots under an open session must not hang the test.
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
]


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=timeout)


def missing_tools(*tools: str) -> list[str]:
    return [tool for tool in tools if not shutil.which(tool)]


def build_guest_image(script: str, out: Path, *tools: str, timeout: float) -> Path:
    """Run ``guest/<script> OUT`` (each build script caches by its inputs) and return OUT.

    Fails the test, with the build's output, when a tool is missing or the build fails."""
    missing = missing_tools(*tools)
    assert not missing, f"missing tools (scripts/install-deps.sh installs them): {missing}"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["sh", str(REPO / "guest" / script), str(out)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}{result.stderr[-4000:]}"
    return out


def make_key(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh ed25519 key pair: (private key path, public key line)."""
    private = directory / name
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@slurm-vc-test", "-f", str(private))
    return private, (directory / f"{name}.pub").read_text().strip()


@dataclass
class PrivateNet:
    """netns + bridge (host side of the guest network) + tap, created on enter, removed on exit."""

    host_ip: str
    prefixlen: int
    host_mac: str
    mtu: int
    ns: str = field(default_factory=lambda: f"sgt-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    bridge: str = "sgtbr0"
    tap: str = "sgttap0"

    def __enter__(self) -> PrivateNet:
        run("ip", "netns", "add", self.ns)
        try:
            for argv in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "link", "add", self.bridge, "type", "bridge"],
                # A bridge takes its ports' MACs unless it has one of its own.
                ["ip", "link", "set", self.bridge, "address", self.host_mac, "mtu", str(self.mtu)],
                ["ip", "addr", "add", f"{self.host_ip}/{self.prefixlen}", "dev", self.bridge],
                ["ip", "tuntap", "add", "dev", self.tap, "mode", "tap"],
                ["ip", "link", "set", self.tap, "mtu", str(self.mtu), "master", self.bridge, "up"],
                ["ip", "link", "set", self.bridge, "up"],
            ):
                self.exec(*argv)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        run("ip", "netns", "del", self.ns, check=False)

    def exec(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return run("nsenter", f"--net=/run/netns/{self.ns}", "--", *argv, check=check, timeout=timeout)

    def ssh(self, key: Path, user: str, ip: str, command: str, check: bool = True, timeout: float = 60):
        """Run ``command`` in the guest.  With check=False a timeout is a failed run, not an exception."""
        argv = ["ssh", "-i", str(key), *SSH_OPTS, f"{user}@{ip}", command]
        try:
            return self.exec(*argv, check=check, timeout=timeout)
        except subprocess.TimeoutExpired:
            if check:
                raise
            return subprocess.CompletedProcess(argv, 255, "", f"ssh timed out after {timeout} s")


@dataclass
class Qemu:
    """A plain qemu-system-x86_64 under TCG in a PrivateNet, its console in a file."""

    net: PrivateNet
    workdir: Path
    mac: str
    kernel: str
    initrd: str
    append: str
    memory_mb: int = 256
    drives: list[str] = field(default_factory=list)  # extra -drive values
    cdrom: Optional[str] = None
    ready_port: bool = True
    agent_socket: Optional[str] = None  # UNIX socket for the guest agent port, when set
    proc: Optional[subprocess.Popen] = None
    started: float = 0.0

    @property
    def console(self) -> Path:
        return self.workdir / "console.log"

    @property
    def ready_log(self) -> Path:
        return self.workdir / "ready.log"

    def argv(self) -> list[str]:
        argv = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(self.memory_mb),
            "-smp",
            "1",
            "-nographic",
            "-nodefaults",
            "-no-user-config",
            "-kernel",
            self.kernel,
            "-initrd",
            self.initrd,
            "-append",
            self.append,
            "-serial",
            f"file:{self.console}",
            "-netdev",
            f"tap,id=net0,ifname={self.net.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={self.mac},romfile=",
            # Entropy at once (as libvirt domains get it): without it the guest's first
            # getrandom() (the SSH host key) waits ~1 s under TCG for the kernel's pool.
            "-device",
            "virtio-rng-pci",
        ]
        for drive in self.drives:
            argv += ["-drive", drive]
        if self.cdrom:
            argv += ["-drive", f"file={self.cdrom},media=cdrom,readonly=on,if=ide,format=raw"]
        if self.ready_port:
            argv += [
                "-device",
                "virtio-serial-pci",
                "-chardev",
                f"file,id=ready,path={self.ready_log}",
                "-device",
                "virtserialport,chardev=ready,name=org.slurm-vc.ready",
            ]
        if self.agent_socket:
            if not self.ready_port:
                argv += ["-device", "virtio-serial-pci"]
            argv += [
                "-chardev",
                f"socket,id=agent,path={self.agent_socket},server=on,wait=off",
                "-device",
                "virtserialport,chardev=agent,name=org.qemu.guest_agent.0",
            ]
        return argv

    def agent(self, command: str, timeout: float = 30) -> dict:
        """One guest-agent command (e.g. 'guest-ping') over the agent socket; the JSON reply."""
        assert self.agent_socket
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.agent_socket)
            # guest-sync-delimited first: it flushes whatever an earlier client left half-read.
            sock.sendall(b'{"execute":"guest-sync-delimited","arguments":{"id":4711}}\n')
            buffer = b""
            while b"4711" not in buffer and time.monotonic() < deadline:
                buffer += sock.recv(4096)
            sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
            buffer = b""
            while not buffer.endswith(b"\n") and time.monotonic() < deadline:
                buffer += sock.recv(4096)
            return json.loads(buffer.decode())

    def __enter__(self) -> Qemu:
        log = open(self.workdir / "qemu.log", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.net.ns}", "--", *self.argv()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        parts = []
        for path in (self.workdir / "qemu.log", self.console):
            if path.exists():
                parts.append(f"--- {path.name} ---\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def wait_for_line(self, path: Path, text: str, timeout: float) -> float:
        """Seconds from QEMU start until ``text`` shows in ``path``; AssertionError on timeout/exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return time.monotonic() - self.started
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before {text!r}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in {path.name} after {timeout} s:\n{self.tail()}")

    def wait_for_ssh(self, key: Path, user: str, ip: str, timeout: float) -> float:
        """Seconds from QEMU start until an SSH login with ``key`` works."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}):\n{self.tail()}")
            result = self.net.ssh(key, user, ip, "true", check=False, timeout=20)
            if result.returncode == 0:
                return time.monotonic() - self.started
            last = result.stderr
            time.sleep(1)
        raise AssertionError(
            f"no SSH login to {user}@{ip} after {timeout} s ({last.strip()}):\n{self.tail()}"
        )


def arp_table(text: str) -> dict[str, tuple[str, int]]:
    """/proc/net/arp -> {ip: (mac, flags)}."""
    table = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 6:
            table[fields[0]] = (fields[3].lower(), int(fields[2], 16))
    return table


def hosts_table(text: str) -> dict[str, list[str]]:
    """/etc/hosts -> {name: [addresses]}."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            address, *names = line.split()
            for name in names:
                table.setdefault(name, []).append(address)
    return table


ATF_COM = 0x02
ATF_PERM = 0x04
