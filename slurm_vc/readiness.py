"""Readiness: decide when a started guest is usable, with a bounded wait.

The probe is chosen per image (``ImageSpec.readiness.probe``):

- ``serial``: the guest writes a line containing ``readiness.serial_line`` (default ``SLURM-VC-READY``)
  to the virtio-serial port ``org.slurm-vc.ready``, whose host side is a file or a listening UNIX
  socket; the console log is scanned too, for images that can only print on ttyS0.
- ``agent``: qemu-guest-agent answers ``guest-ping`` (through libvirt's agent channel).
- ``tcp``: a TCP port (default 22, ssh) on the guest's address accepts connections.

On timeout, :class:`~slurm_vc.errors.GuestNotReadyError` carries the last lines of the console log, so
the user sees why the guest did not come up (kernel panic, cloud-init error, ...).  A guest that stops
while we wait fails at once with the same information.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path
from typing import Optional, Protocol

from .config import Readiness
from .errors import GuestNotReadyError, HypervisorError
from .hypervisor import Hypervisor, read_qemu_exit, tail_file

CONSOLE_TAIL_LINES = 20
POLL_INTERVAL = 0.05  # probes that ask the guest something (agent ping, TCP connect)
# The serial probe's poll is a stat and a read of two small files (~50 us): every 10 ms costs ~0.5%
# of a CPU while the guest boots, and the ready line is seen 5 ms after it was written on average
# (25 ms at POLL_INTERVAL), which every --vcluster job waits for.
SERIAL_POLL_INTERVAL = 0.01


class Probe(Protocol):
    """One readiness check; ``poll`` is cheap and never blocks for long."""

    description: str
    poll_interval: float  # seconds between two polls

    def poll(self) -> bool: ...

    def close(self) -> None: ...


class _GrowingText:
    """The new text of a file or a connected UNIX socket since the previous read.

    A file that became shorter than what was read (virtlogd rotates a console log at its size
    limit) is read again from its start.
    """

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.sock: Optional[socket.socket] = None
        self.pending = ""  # text received since the last read_new, from the socket

    def read_new(self) -> str:
        try:
            mode = os.stat(self.path).st_mode
        except OSError:
            return ""
        if stat.S_ISSOCK(mode):
            self._read_socket()
            text, self.pending = self.pending, ""
            return text
        if not stat.S_ISREG(mode):
            return ""
        try:
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self.offset:
                    self.offset = 0  # rotated or truncated: a new file
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return ""
        self.offset += len(data)
        return data.decode(errors="replace")

    def _read_socket(self) -> None:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                return
            sock.setblocking(False)
            self.sock = sock
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            if not data:  # QEMU closed the socket: reconnect on the next poll
                self.close()
                return
            self.pending += data.decode(errors="replace")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class SerialProbe:
    """The ready line on the ready channel (file or UNIX socket) or in the console log."""

    poll_interval = SERIAL_POLL_INTERVAL

    def __init__(self, line: str, channel_path: Optional[str], console_log: Optional[str]):
        self.line = line
        self.sources = [_GrowingText(path) for path in (channel_path, console_log) if path]
        # Per source, the end of what was read that could still begin the line: only the new text
        # and this overlap are searched, so a chatty console costs neither memory nor rescans.
        self._carry = ["" for _ in self.sources]
        self.description = f"the line {line!r} on " + " or ".join(source.path for source in self.sources)
        if not self.sources:
            raise ValueError("the serial probe needs a ready channel path or a console log")

    def poll(self) -> bool:
        keep = len(self.line) - 1
        found = False
        for index, source in enumerate(self.sources):
            window = self._carry[index] + source.read_new()
            found = found or self.line in window
            self._carry[index] = window[-keep:] if keep else ""
        return found

    def close(self) -> None:
        for source in self.sources:
            source.close()


class AgentProbe:
    """qemu-guest-agent answers ``guest-ping``."""

    poll_interval = POLL_INTERVAL

    def __init__(self, hypervisor: Hypervisor, name: str):
        self.hypervisor = hypervisor
        self.name = name
        self.description = f"qemu-guest-agent guest-ping in {name}"

    def poll(self) -> bool:
        try:
            return self.hypervisor.agent_ping(self.name)
        except HypervisorError:
            return False  # the wait loop notices a guest that is gone

    def close(self) -> None:
        pass


class TcpProbe:
    """A TCP port on the guest accepts a connection."""

    poll_interval = POLL_INTERVAL

    def __init__(self, address: str, port: int):
        self.address = address
        self.port = port
        self.description = f"TCP port {port} on {address}"

    def poll(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def close(self) -> None:
        pass


def make_probe(
    readiness: Readiness,
    hypervisor: Hypervisor,
    name: str,
    *,
    ready_channel: Optional[str] = None,
    console_log: Optional[str] = None,
    address: Optional[str] = None,
) -> Probe:
    """The probe the image asks for."""
    if readiness.probe == "serial":
        return SerialProbe(readiness.serial_line, ready_channel, console_log)
    if readiness.probe == "agent":
        return AgentProbe(hypervisor, name)
    if readiness.probe == "tcp":
        if not address:
            raise ValueError("the tcp readiness probe needs the guest's address")
        return TcpProbe(address, readiness.tcp_port)
    raise ValueError(f"unknown readiness probe {readiness.probe!r}")


def wait_ready(
    hypervisor: Hypervisor,
    name: str,
    readiness: Readiness,
    timeout: float,
    *,
    ready_channel: Optional[str] = None,
    console_log: Optional[str] = None,
    address: Optional[str] = None,
    probe: Optional[Probe] = None,
    domain_log: Optional[str] = None,
) -> float:
    """Wait until guest ``name`` is ready; return the seconds it took.

    Raises GuestNotReadyError (with the console tail) on timeout or when the guest stops meanwhile
    (it powered off, or reset itself: the image's doing).  When libvirt's ``domain_log`` shows that
    QEMU was killed instead (the OOM killer, a signal from another process), HypervisorError: a
    node fault, not the user's.
    """
    probe = probe or make_probe(
        readiness, hypervisor, name, ready_channel=ready_channel, console_log=console_log, address=address
    )
    start = time.monotonic()
    deadline = start + timeout
    next_alive_check = start
    libvirt_down: Optional[HypervisorError] = None  # the last failure, while libvirtd is unreachable
    try:
        while True:
            if probe.poll():
                return time.monotonic() - start
            now = time.monotonic()
            if now >= next_alive_check:  # a libvirt round trip: not on every poll
                next_alive_check = now + 0.5
                try:
                    running = hypervisor.is_running(name)
                    libvirt_down = None
                except HypervisorError as failure:
                    # libvirtd restarting (the guest lives on without it): reconnect and keep
                    # waiting; if it never comes back the deadline below ends the wait.
                    running = True
                    libvirt_down = failure
                    _try_reconnect(hypervisor)
                if not running:
                    _raise_if_host_killed(name, domain_log)
                    raise GuestNotReadyError(
                        f"guest {name} stopped before it became ready (waited for {probe.description})"
                        + _console_section(hypervisor, name, console_log)
                    )
            if now >= deadline:
                if libvirt_down is not None:
                    # Not the guest's fault: the node's libvirtd is gone (a node fault, which drains).
                    raise HypervisorError(
                        f"guest {name} was not ready after {timeout:.0f} s, and libvirt on this node has"
                        f" been unreachable since before then: {libvirt_down}"
                    )
                raise GuestNotReadyError(
                    f"guest {name} was not ready after {timeout:.0f} s (waited for {probe.description})"
                    + _console_section(hypervisor, name, console_log)
                )
            time.sleep(probe.poll_interval)
    finally:
        probe.close()


def _raise_if_host_killed(name: str, domain_log: Optional[str]) -> None:
    ended = read_qemu_exit(domain_log)
    if ended is not None and ended.host_killed:
        raise HypervisorError(
            f"guest {name} stopped before it became ready, but not by its own doing: {ended.describe()};"
            f" see {domain_log}"
        )


def _try_reconnect(hypervisor) -> None:
    reconnect = getattr(hypervisor, "reconnect", None)
    if reconnect is None:
        return
    try:
        reconnect()
    except HypervisorError:
        pass


def _console_section(hypervisor: Hypervisor, name: str, console_log: Optional[str]) -> str:
    text = ""
    if console_log:
        text = tail_file(console_log, CONSOLE_TAIL_LINES)
    else:
        try:
            text = hypervisor.console_tail(name, CONSOLE_TAIL_LINES)
        except HypervisorError:
            pass
    if not text.strip():
        return "; the guest console log is empty"
    where = f" ({console_log})" if console_log else ""
    return f"; last lines of the guest console{where}:\n{text.rstrip()}"


def console_tail(path: str | Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    """The last lines of a console log file ('' when missing)."""
    return tail_file(path, lines)


__all__ = ["wait_ready", "make_probe", "SerialProbe", "AgentProbe", "TcpProbe", "console_tail"]
