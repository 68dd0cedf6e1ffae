"""The hypervisor driver: a thin wrapper over libvirt-python for transient guest domains.

Guests are *transient* (``virDomainCreateXML``): nothing is defined persistently, so a host reboot or
a libvirtd wipe leaves no configuration behind, and the per-job state file is the only record.
Domain names follow ``vc-<jobid>-<node>`` (:func:`domain_name`) so ``virsh list`` shows the owning
job and node and ``slurm-vc gc`` can find guests whose job is gone.

Every libvirt failure becomes a :class:`~slurm_vc.errors.HypervisorError` (a node fault) except a
hugepage pool that cannot back the guest, which is a :class:`~slurm_vc.errors.HugepageError`.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .errors import HugepageError, HypervisorError
from .text import clip_lines, printable

if TYPE_CHECKING:
    from .qemu_access import QemuUser

DOMAIN_PREFIX = "vc-"
_DOMAIN_RE = re.compile(r"^vc-(\d+)-(.+)\Z")
# QEMU/libvirt messages that mean "the hugepage pool could not back guest RAM".
_HUGEPAGE_MESSAGES = ("unable to map backing store", "hugetlbfs filesystem is not mounted")


def domain_name(job_id: int | str, node: str) -> str:
    """The libvirt domain name of a job's guest on ``node``: ``vc-<jobid>-<node>``."""
    return f"{DOMAIN_PREFIX}{job_id}-{node}"


def parse_domain_name(name: str) -> Optional[tuple[int, str]]:
    """``(job_id, node)`` for a name made by :func:`domain_name`, else None."""
    match = _DOMAIN_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else None


def _libvirt():
    try:
        import libvirt
    except ImportError:  # pragma: no cover - the package depends on it in production
        raise HypervisorError("libvirt-python is not installed (pip install libvirt-python)") from None
    # libvirt prints every error to stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _cpus_from_map(cpumap) -> tuple[int, ...]:
    return tuple(cpu for cpu, on in enumerate(cpumap) if on)


class Hypervisor:
    """A connection to one libvirtd.  Use as a context manager or call :meth:`close`."""

    def __init__(self, uri: str):
        self.uri = uri
        self._conn = None
        self._connect()

    def _connect(self) -> None:
        libvirt = _libvirt()
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(
                f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()} "
                "(is libvirtd running on this node?)"
            ) from None
        if self._conn is None:  # pragma: no cover - old bindings returned None instead of raising
            raise HypervisorError(f"cannot connect to libvirt at {self.uri}")

    def reconnect(self) -> None:
        """Open a new connection (after libvirtd restarted).  Raises HypervisorError if unreachable."""
        self.close()
        self._connect()

    def _connection(self):
        """The open connection; after a failed :meth:`reconnect` left none, try once more
        (HypervisorError if libvirtd is still unreachable)."""
        if self._conn is None:
            self._connect()
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a dead daemon: nothing to close
                pass
            self._conn = None

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def qemu_user(self, domain_type: str) -> QemuUser:
        """The user libvirt runs QEMU as for ``domain_type`` (its DAC base label), with that user's
        groups; UNPRIVILEGED (the "other" bits) when libvirt reports none or cannot say."""
        from .qemu_access import UNPRIVILEGED, dac_label, qemu_user

        libvirt = _libvirt()
        try:
            label = dac_label(self._connection().getCapabilities(), domain_type)
        except libvirt.libvirtError:
            return UNPRIVILEGED
        return qemu_user(*label) if label else UNPRIVILEGED

    def _error(self, what: str, exc) -> HypervisorError:
        return HypervisorError(f"libvirt at {self.uri}: {what}: {exc.get_error_message()}")

    # -- domains -------------------------------------------------------------------------------
    def _lookup(self, name: str):
        """The domain object, or None when no such domain exists."""
        libvirt = _libvirt()
        try:
            return self._connection().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error(f"looking up {name}", exc) from None

    def _domain(self, name: str):
        dom = self._lookup(name)
        if dom is None:
            raise HypervisorError(f"no guest named {name} on {self.uri}")
        return dom

    def start(self, xml: str) -> str:
        """Start a transient domain from its XML and return its name."""
        libvirt = _libvirt()
        try:
            dom = self._connection().createXML(xml, 0)
        except libvirt.libvirtError as exc:
            message = exc.get_error_message()
            if any(text in message for text in _HUGEPAGE_MESSAGES):
                raise HugepageError(f"QEMU could not get hugepages for the guest: {message}") from None
            raise HypervisorError(f"libvirt refused to start the guest: {message}") from None
        return dom.name()

    def destroy(self, name: str) -> bool:
        """Stop the domain at once (power off).  True if it was running; False if already gone."""
        libvirt = _libvirt()
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            dom.destroy()
        except libvirt.libvirtError as exc:
            # It may have died or been destroyed by someone else between lookup and destroy.
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                return False
            raise HypervisorError(f"libvirt could not destroy {name}: {exc.get_error_message()}") from None
        return True

    def list_domains(self, prefix: str = DOMAIN_PREFIX) -> list[str]:
        """Names of the running domains whose name starts with ``prefix``, sorted."""
        libvirt = _libvirt()
        try:
            domains = self._connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            raise self._error("listing guests", exc) from None
        return sorted(dom.name() for dom in domains if dom.name().startswith(prefix))

    def is_running(self, name: str) -> bool:
        """True while the domain exists and is active."""
        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            return bool(dom.isActive())
        except _libvirt().libvirtError:
            return False

    def xml(self, name: str) -> str:
        """The live domain XML (as libvirt completed it)."""
        try:
            return self._domain(name).XMLDesc(0)
        except _libvirt().libvirtError as exc:
            raise self._error(f"reading the XML of {name}", exc) from None

    def qemu_pid(self, name: str) -> int:
        """PID of the QEMU process running the domain (found by its ``-name guest=NAME`` argument)."""
        import psutil

        if not self.is_running(name):
            raise HypervisorError(f"guest {name} is not running")
        wanted = f"guest={name},"
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if any(arg == f"guest={name}" or arg.startswith(wanted) for arg in cmdline):
                return proc.pid
        raise HypervisorError(f"no QEMU process found for guest {name}")

    def vcpu_pins(self, name: str) -> dict[int, tuple[int, ...]]:
        """vCPU -> host CPUs it may run on, as libvirt reports it (``vcpuPinInfo``)."""
        try:
            info = self._domain(name).vcpuPinInfo(0)
        except _libvirt().libvirtError as exc:
            raise self._error(f"reading the vCPU pinning of {name}", exc) from None
        return {vcpu: _cpus_from_map(cpumap) for vcpu, cpumap in enumerate(info)}

    def emulator_pins(self, name: str) -> tuple[int, ...]:
        """Host CPUs QEMU's emulator threads may run on (``emulatorPinInfo``)."""
        try:
            return _cpus_from_map(self._domain(name).emulatorPinInfo(0))
        except _libvirt().libvirtError as exc:
            raise self._error(f"reading the emulator pinning of {name}", exc) from None

    def agent_ping(self, name: str, timeout: int = 1) -> bool:
        """True when the guest's qemu-guest-agent answers ``guest-ping`` within ``timeout`` seconds."""
        libvirt = _libvirt()
        import libvirt_qemu

        dom = self._lookup(name)
        if dom is None:
            return False
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', timeout, 0)
        except libvirt.libvirtError:
            return False  # agent not connected (yet) or not answering
        return True

    def console_log_path(self, name: str) -> Optional[str]:
        """The file the guest's serial console is logged to, from the live XML (None if none)."""
        from lxml import etree

        root = etree.fromstring(self.xml(name).encode())
        for xpath in ("devices/serial/log/@file", "devices/serial[@type='file']/source/@path"):
            found = root.xpath(xpath)
            if found:
                return str(found[0])
        return None

    def console_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of the guest's console log ('' if it has none yet)."""
        path = self.console_log_path(name)
        return tail_file(path, lines) if path else ""


TAIL_BYTES = 64 * 1024  # a console log may be megabytes; its last lines are in its last bytes
TAIL_LINE_WIDTH = 300


def _read_tail(path: str | Path) -> tuple[bytes, bool]:
    """The last TAIL_BYTES of a file, and whether that cut anything off its start (OSError if it
    cannot be read)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - TAIL_BYTES))
        return handle.read(TAIL_BYTES), size > TAIL_BYTES


def tail_file(path: str | Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log for a message ('' when missing or unreadable).

    Reads at most the last 64 KiB; each line is cut to 300 characters, and terminal escape
    sequences and control characters are removed (:func:`slurm_vc.text.printable`): a guest's
    console is its owner's text.
    """
    try:
        data, cut = _read_tail(path)
    except OSError:
        return ""
    text = printable(data.decode(errors="replace"))
    kept = text.split("\n")
    if cut and len(kept) > 1:
        kept = kept[1:]  # the first line was cut by the window
    ended = text.endswith("\n")
    if ended:
        kept = kept[:-1]
    kept = kept[-lines:] if lines > 0 else []
    return clip_lines("\n".join(kept), TAIL_LINE_WIDTH) + ("\n" if kept and ended else "")


# libvirt's own processes: a SIGTERM from one of them is libvirt stopping the guest (after the guest
# reset itself under on_reboot=destroy, or a destroy), not somebody on the host killing QEMU.
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")
_STARTING = re.compile(r": starting up ")
_SHUTTING_DOWN = re.compile(r": shutting down, reason=([\w-]+)")
_SIGNAL = re.compile(r"terminating on signal (\d+) from pid (\d+) \(([^)]*)\)")


@dataclass(frozen=True)
class QemuExit:
    """How libvirt recorded the end of a guest's QEMU, from the domain's log."""

    reason: str  # libvirt's shutoff reason: shutdown, crashed, destroyed, failed, ...
    signal: Optional[int] = None  # a signal QEMU reported ("terminating on signal N from pid P")
    sender: str = ""  # the process that sent it, as QEMU names it

    @property
    def host_killed(self) -> bool:
        """QEMU died without the guest shutting down or resetting: killed outright (SIGKILL, the OOM
        killer; libvirt then says ``crashed``, as for a QEMU that crashed), or sent a signal by a
        process other than libvirt.  Not the guest's doing: our domains have no pvpanic device, so
        a guest's panic is a reset, which libvirt records as ``shutdown``."""
        if self.reason in ("crashed", "failed"):
            return True
        foreign = self.sender and os.path.basename(self.sender) not in LIBVIRT_DAEMONS
        return self.signal is not None and bool(foreign)

    def describe(self) -> str:
        """One clause for a message: what libvirt and QEMU wrote."""
        if self.signal is not None:
            return f"QEMU was sent signal {self.signal} by {self.sender} (libvirt: reason={self.reason})"
        return f"QEMU died (libvirt: reason={self.reason}; killed, e.g. by the OOM killer, or crashed)"


def parse_qemu_exit(log_text: str) -> Optional[QemuExit]:
    """The end of the last run in a libvirt domain log (``<log dir>/<domain>.log``), or None when
    that run has not ended there (yet).  A log holds every run of a domain name: a requeued job's
    guest has the same name, so only the text after the last ``starting up`` line counts."""
    starts = list(_STARTING.finditer(log_text))
    run = log_text[starts[-1].end() :] if starts else log_text
    ended = _SHUTTING_DOWN.search(run)
    if not ended:
        return None
    signals = _SIGNAL.findall(run[: ended.start()])
    if signals:
        number, _pid, sender = signals[-1]
        return QemuExit(ended.group(1), int(number), sender)
    return QemuExit(ended.group(1))


def read_qemu_exit(domain_log: Optional[str], wait: float = 1.0) -> Optional[QemuExit]:
    """:func:`parse_qemu_exit` of ``domain_log``, waiting up to ``wait`` seconds for libvirt to
    write its ``shutting down`` line; None when the log is not there or says nothing."""
    if not domain_log:
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            found = parse_qemu_exit(_read_tail(domain_log)[0].decode(errors="replace"))
        except OSError:
            return None
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


__all__ = [
    "DOMAIN_PREFIX",
    "Hypervisor",
    "QemuExit",
    "domain_name",
    "parse_domain_name",
    "parse_qemu_exit",
    "read_qemu_exit",
    "tail_file",
]
