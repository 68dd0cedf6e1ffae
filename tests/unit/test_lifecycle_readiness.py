"""Readiness probes and the bounded wait, with a fake hypervisor (no libvirt needed)."""

from __future__ import annotations

import socket
import threading

import pytest

from slurm_vc.config import Readiness
from slurm_vc.errors import GuestNotReadyError
from slurm_vc.readiness import SerialProbe, TcpProbe, make_probe, wait_ready


class FakeHypervisor:
    def __init__(self, running=True):
        self.running = running

    def is_running(self, name):
        return self.running

    def console_tail(self, name, lines=20):
        return ""


def test_serial_probe_reads_a_growing_file(tmp_path):
    channel = tmp_path / "ready.log"
    probe = SerialProbe("SLURM-VC-READY", str(channel), None)
    assert not probe.poll()  # file not there yet
    channel.write_text("booting\nSLURM-VC-")
    assert not probe.poll()
    with open(channel, "a") as handle:
        handle.write("READY vc1-0\n")
    assert probe.poll()


def test_serial_probe_sees_the_line_after_the_console_log_is_rotated(tmp_path):
    """virtlogd rotates a console log at its size limit: the new, shorter file is read from its start."""
    console = tmp_path / "console.log"
    console.write_text("x" * 10_000 + "\n")
    probe = SerialProbe("SLURM-VC-READY", None, str(console))
    assert not probe.poll()
    console.rename(tmp_path / "console.log.0")
    console.write_text("SLURM-VC-READY vc1-0\n")
    assert probe.poll()


def test_serial_probe_keeps_only_an_overlap_of_a_chatty_console(tmp_path):
    console = tmp_path / "console.log"
    probe = SerialProbe("SLURM-VC-READY", None, str(console))
    with open(console, "w") as handle:
        for _ in range(50):
            handle.write("noise " * 1000 + "\n")
            handle.flush()
            assert not probe.poll()
        handle.write("...SLURM-VC-")
        handle.flush()
        assert not probe.poll()
        assert max(len(carry) for carry in probe._carry) == len("SLURM-VC-READY") - 1
        handle.write("READY vc1-0\n")
        handle.flush()
    assert probe.poll()


def test_serial_probe_falls_back_to_the_console_log(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[    1.0] kernel\nSLURM-VC-READY vc1-0\n")
    probe = SerialProbe("SLURM-VC-READY", str(tmp_path / "missing"), str(console))
    assert probe.poll()


def test_serial_probe_reads_a_unix_socket(tmp_path):
    path = str(tmp_path / "ready.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    probe = SerialProbe("SLURM-VC-READY", path, None)

    def guest():
        conn, _ = server.accept()
        conn.sendall(b"SLURM-VC-READY vc2-0\n")
        conn.close()

    thread = threading.Thread(target=guest)
    thread.start()
    try:
        found = False
        for _ in range(200):
            if probe.poll():
                found = True
                break
            threading.Event().wait(0.01)
        assert found
    finally:
        probe.close()
        thread.join(5)
        server.close()


def test_tcp_probe():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert TcpProbe("127.0.0.1", port).poll()
    server.close()
    assert not TcpProbe("127.0.0.1", port).poll()


def test_make_probe_choices(tmp_path):
    hv = FakeHypervisor()
    assert isinstance(make_probe(Readiness(probe="serial"), hv, "g", ready_channel="x"), SerialProbe)
    assert isinstance(make_probe(Readiness(probe="tcp"), hv, "g", address="10.0.0.1"), TcpProbe)
    with pytest.raises(ValueError):
        make_probe(Readiness(probe="tcp"), hv, "g")


def test_wait_ready_returns_elapsed_time(tmp_path):
    channel = tmp_path / "ready.log"
    channel.write_text("SLURM-VC-READY x\n")
    seconds = wait_ready(FakeHypervisor(), "g", Readiness(), 5, ready_channel=str(channel))
    assert seconds >= 0


def test_wait_ready_timeout_carries_the_console_tail(tmp_path):
    console = tmp_path / "console.log"
    console.write_text("".join(f"line {i}\n" for i in range(100)) + "Kernel panic - not syncing\n")
    with pytest.raises(GuestNotReadyError) as failure:
        wait_ready(FakeHypervisor(), "vc-1-n", Readiness(), 0.3, console_log=str(console))
    message = str(failure.value)
    assert "vc-1-n was not ready after 0 s" in message
    assert "Kernel panic - not syncing" in message
    assert "line 99" in message and "line 80" not in message  # only the tail (20 lines)
    assert failure.value.user_fault  # an image that does not boot must not drain the node


def test_wait_ready_fails_fast_when_the_guest_stops(tmp_path):
    with pytest.raises(GuestNotReadyError, match="stopped before it became ready.*console log is empty"):
        wait_ready(FakeHypervisor(running=False), "g", Readiness(), 60, console_log=str(tmp_path / "none"))


# The ends of real runs, as the sandbox's libvirtd 9.0 and QEMU 7.2 wrote them (integration tests).
STARTED = (
    "2026-12-03 21:46:50.101+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.0\nLC_ALL=C ...\n"
)
KILLED = STARTED + "2026-12-03 21:46:52.301+0000: shutting down, reason=crashed\n"
TERMINATED_BY_ADMIN = STARTED + (
    "2026-12-03T21:46:53.658378Z qemu-system-x86_64:"
    " terminating on signal 15 from pid 24140 (/usr/bin/kill)\n"
    "2026-12-03 21:46:53.886+0000: shutting down, reason=shutdown\n"
)
GUEST_RESET = STARTED + (
    "2026-12-03T21:47:02.460467Z qemu-system-x86_64:"
    " terminating on signal 15 from pid 24153 (/usr/sbin/libvirtd)\n"
    "2026-12-03 21:47:02.685+0000: shutting down, reason=shutdown\n"
)


@pytest.mark.parametrize(
    "log,host_killed",
    [
        (KILLED, True),
        (TERMINATED_BY_ADMIN, True),
        (GUEST_RESET, False),
        (STARTED + ": shutting down, reason=shutdown\n", False),
    ],
)
def test_qemu_exit_tells_the_host_from_the_guest(log, host_killed):
    from slurm_vc.hypervisor import parse_qemu_exit

    ended = parse_qemu_exit(log)
    assert ended is not None and ended.host_killed is host_killed


def test_qemu_exit_reads_only_the_last_run():
    """A requeued job's guest has the same name: an earlier run's kill is not this run's."""
    from slurm_vc.hypervisor import parse_qemu_exit

    assert parse_qemu_exit(KILLED + GUEST_RESET).host_killed is False
    assert parse_qemu_exit(KILLED + STARTED) is None  # this run has not ended in the log yet
    assert parse_qemu_exit(TERMINATED_BY_ADMIN).describe() == (
        "QEMU was sent signal 15 by /usr/bin/kill (libvirt: reason=shutdown)"
    )
    assert parse_qemu_exit("") is None


def test_wait_ready_makes_a_host_killed_qemu_a_node_fault(tmp_path):
    """A guest whose QEMU the host killed is not the user's fault: HypervisorError, which drains."""
    from slurm_vc.errors import HypervisorError

    def wait_for_stopped_guest(domain_log):
        wait_ready(
            FakeHypervisor(running=False),
            "vc-1-n",
            Readiness(),
            60,
            console_log=str(tmp_path / "console"),
            domain_log=str(domain_log),
        )

    log = tmp_path / "vc-1-n.log"
    log.write_text(KILLED)
    with pytest.raises(
        HypervisorError, match=r"not by its own doing: QEMU died \(libvirt: reason=crashed"
    ) as failure:
        wait_for_stopped_guest(log)
    assert not failure.value.user_fault and str(log) in str(failure.value)
    log.write_text(GUEST_RESET)
    with pytest.raises(GuestNotReadyError, match="stopped before it became ready"):
        wait_for_stopped_guest(log)
    # no log (another libvirt layout): as before, the guest's
    with pytest.raises(GuestNotReadyError):
        wait_for_stopped_guest(tmp_path / "none")


def test_wait_ready_survives_a_libvirtd_restart(tmp_path):
    """While libvirtd restarts, is_running fails: the wait reconnects and goes on."""
    from slurm_vc.errors import HypervisorError

    channel = tmp_path / "ready.log"

    class Restarting(FakeHypervisor):
        def __init__(self):
            super().__init__()
            self.calls = 0
            self.reconnects = 0

        def is_running(self, name):
            self.calls += 1
            if self.calls == 1:
                raise HypervisorError("libvirt at X: looking up g: End of file while reading data")
            channel.write_text("SLURM-VC-READY g\n")
            return True

        def reconnect(self):
            self.reconnects += 1

    hv = Restarting()
    wait_ready(hv, "g", Readiness(), 10, ready_channel=str(channel))
    assert hv.reconnects == 1


def test_wait_ready_with_libvirtd_gone_until_the_deadline_is_a_node_fault(tmp_path):
    """libvirtd never comes back: a HypervisorError (drains), not the image's GuestNotReadyError."""
    from slurm_vc.errors import HypervisorError

    class Gone(FakeHypervisor):
        def is_running(self, name):
            raise HypervisorError("cannot connect to libvirt at X: Connection refused")

        def reconnect(self):
            raise HypervisorError("cannot connect to libvirt at X: Connection refused")

    with pytest.raises(HypervisorError, match="unreachable since before then: cannot connect") as failure:
        wait_ready(Gone(), "g", Readiness(), 0.3, ready_channel=str(tmp_path / "never"))
    assert not failure.value.user_fault


def test_hypervisor_after_a_failed_reconnect_tries_again(monkeypatch):
    """A failed reconnect leaves no connection: the next call reconnects (or says libvirt is down),
    instead of an AttributeError on None that would drain the node as an internal error."""
    from slurm_vc import hypervisor as hypervisor_module
    from slurm_vc.errors import HypervisorError

    hv = hypervisor_module.Hypervisor("test:///default")
    real_connect = hv._connect
    monkeypatch.setattr(hv, "_connect", lambda: (_ for _ in ()).throw(HypervisorError("refused")))
    with pytest.raises(HypervisorError):
        hv.reconnect()
    with pytest.raises(HypervisorError, match="refused"):
        hv.is_running("test")
    monkeypatch.setattr(hv, "_connect", real_connect)
    assert hv.is_running("test") is True  # the test driver's built-in domain
    hv.close()
