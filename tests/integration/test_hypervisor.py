"""The private libvirtd launcher, the hypervisor driver and qcow2 overlays against real tools."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slurm_vc.errors import HostError, HypervisorError, ImageError
from slurm_vc.hypervisor import Hypervisor, domain_name, parse_domain_name
from slurm_vc.images import create_overlay, image_info, remove_overlay

pytestmark = pytest.mark.integration

GUEST_XML = """
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static'>1</vcpu>
  <cputune><vcpupin vcpu='0' cpuset='{vcpu_cpu}'/><emulatorpin cpuset='{emulator_cpu}'/></cputune>
  <os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
      <cmdline>{cmdline}</cmdline></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def guest_xml(name: str, tiny_guest: dict, directory: Path, vcpu_cpu: int = 1, emulator_cpu: int = 0) -> str:
    from slurm_vc.seed import SeedSpec, kernel_cmdline

    # The tiny guest reports ready only once configured: give it a static address on the command line.
    spec = SeedSpec(
        hostname="hvtest", instance_id=name, ip="10.231.2.1", prefixlen=16, mac="52:54:00:e7:02:01"
    )
    return GUEST_XML.format(
        cmdline=kernel_cmdline(spec, base="console=ttyS0"),
        name=name,
        kernel=tiny_guest["kernel"],
        initrd=tiny_guest["initrd"],
        console=directory / f"{name}.console",
        vcpu_cpu=vcpu_cpu,
        emulator_cpu=emulator_cpu,
    )


def wait_for(predicate, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


# ------------------------------------------------------------------------------ private libvirtd


def _proc_children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_private_libvirtd_layout(private_libvirtd):
    """Daemons under a subreaper supervisor, in their own mount namespace, hugetlbfs mounted there."""
    import json

    supervisor = json.loads((private_libvirtd.dir / "supervisor.json").read_text())
    sup_pid, libvirtd_pid = supervisor["supervisor_pid"], supervisor["libvirtd_pid"]
    assert private_libvirtd.running
    assert libvirtd_pid in _proc_children(sup_pid) and supervisor["virtlogd_pid"] in _proc_children(sup_pid)
    # Its own mount namespace, not ours: the bind mounts and hugetlbfs are invisible here.
    assert os.readlink(f"/proc/{libvirtd_pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    mounts = Path(f"/proc/{libvirtd_pid}/mounts").read_text()
    assert f" {private_libvirtd.dir}/hugepages-2M hugetlbfs " in mounts
    assert " /run/libvirt " in mounts and " /var/lib/libvirt " in mounts
    assert str(private_libvirtd.dir) not in Path("/proc/self/mounts").read_text()
    assert "2M" in private_libvirtd.hugepage_mounts
    with Hypervisor(private_libvirtd.uri) as hv:
        assert hv.list_domains() == [] or all(name.startswith("vc-") for name in hv.list_domains())


def test_private_libvirtd_start_stop_idempotent_and_clean(tmp_path, node_netns):
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    base = Path("/tmp") / f"h5lv{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        daemon = PrivateLibvirtd("one", base, netns=node_netns)
        uri = daemon.start()
        assert daemon.start() == uri  # already running: same daemon
        import json

        pids = json.loads((daemon.dir / "supervisor.json").read_text())
        netns_inode = os.stat(f"/run/netns/{node_netns}").st_ino
        assert os.stat(f"/proc/{pids['libvirtd_pid']}/ns/net").st_ino == netns_inode
        with Hypervisor(uri) as hv:
            assert hv.list_domains() == []
        daemon.stop()
        daemon.stop()  # idempotent
        assert not daemon.running
        assert not daemon.dir.exists()
        for key in ("supervisor_pid", "libvirtd_pid", "virtlogd_pid"):
            assert (
                not Path(f"/proc/{pids[key]}").exists() or "Z" in Path(f"/proc/{pids[key]}/stat").read_text()
            )
        with pytest.raises(HypervisorError, match="cannot connect"):
            Hypervisor(uri)
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_private_libvirtd_rejects_unknown_netns_and_hidden_base(tmp_path):
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    with pytest.raises(HostError, match="does not exist"):
        PrivateLibvirtd("x", tmp_path, netns="h5-no-such-netns").start()
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    with pytest.raises(HostError, match="not searchable by other users"):
        PrivateLibvirtd("x", hidden).start()
    assert not (hidden / "x").exists()


def test_private_libvirtd_rejects_a_base_that_is_a_symlink_into_a_hidden_directory():
    """The directories QEMU crosses are the resolved ones: a world-searchable link does not help."""
    import tempfile

    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    # not tmp_path: pytest's base directory is 0700, which would hide everything below it
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vc-hidden-"))
    daemon = PrivateLibvirtd("x", base / "link")
    try:
        base.chmod(0o755)
        inner = base / "hidden" / "inner"
        inner.mkdir(parents=True)
        (base / "hidden").chmod(0o700)
        (base / "link").symlink_to(inner)
        with pytest.raises(HostError, match=f"{base / 'hidden'} is not searchable by other users"):
            daemon.start()
        assert not (inner / "x").exists()
    finally:
        daemon.stop()  # had it started (the check missing), it must not outlive the test
        shutil.rmtree(base)


# ------------------------------------------------------------------------------ hypervisor driver


def test_domain_names_round_trip():
    assert domain_name(123, "node-7") == "vc-123-node-7"
    assert parse_domain_name("vc-123-node-7") == (123, "node-7")
    assert parse_domain_name("other-vm") is None
    from slurm_vc.network import domain_name as network_domain_name

    assert domain_name(5, "n1") == network_domain_name(5, "n1")


def test_unreachable_libvirt_is_a_hypervisor_error(tmp_path):
    with pytest.raises(HypervisorError, match="is libvirtd running"):
        Hypervisor(f"qemu+unix:///system?socket={tmp_path}/no-such-sock")


def test_start_inspect_destroy(libvirt_uri, tiny_guest, qemu_tmp_path):
    name = "vc-9001-hvtest"
    with Hypervisor(libvirt_uri) as hv:
        assert hv.start(guest_xml(name, tiny_guest, qemu_tmp_path)) == name
        try:
            assert hv.is_running(name)
            assert name in hv.list_domains()
            assert name not in hv.list_domains(prefix="zz-")
            assert hv.vcpu_pins(name) == {0: (1,)}
            assert hv.emulator_pins(name) == (0,)
            pid = hv.qemu_pid(name)
            assert f"guest={name}" in Path(f"/proc/{pid}/cmdline").read_text()
            assert hv.console_log_path(name) == str(qemu_tmp_path / f"{name}.console")
            assert wait_for(lambda: "SLURM-VC-READY" in hv.console_tail(name))
            assert len(hv.console_tail(name, lines=3).splitlines()) <= 3
            with pytest.raises(HypervisorError, match="refused"):
                hv.start(guest_xml(name, tiny_guest, qemu_tmp_path))  # same name twice
        finally:
            assert hv.destroy(name) is True
        assert hv.destroy(name) is False  # already gone: not an error
        assert not hv.is_running(name)
        assert not Path(f"/proc/{pid}").exists()


def test_destroy_of_a_qemu_that_died(libvirt_uri, tiny_guest, qemu_tmp_path):
    name = "vc-9002-hvtest"
    with Hypervisor(libvirt_uri) as hv:
        hv.start(guest_xml(name, tiny_guest, qemu_tmp_path))
        os.kill(hv.qemu_pid(name), signal.SIGKILL)
        assert wait_for(lambda: not hv.is_running(name), 30)
        assert hv.destroy(name) is False


def test_start_refused_with_clear_message(libvirt_uri, tiny_guest, qemu_tmp_path):
    xml = guest_xml("vc-9003-hvtest", tiny_guest, qemu_tmp_path).replace(
        tiny_guest["kernel"], "/no/such/kernel"
    )
    with Hypervisor(libvirt_uri) as hv:
        with pytest.raises(HypervisorError, match="/no/such/kernel"):
            hv.start(xml)
        assert "vc-9003-hvtest" not in hv.list_domains()


# ------------------------------------------------------------------------------ overlays


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_overlay_backed_by_absolute_base_and_base_untouched(base_disk, tmp_path):
    digest, mtime = _sha(base_disk), os.stat(base_disk).st_mtime
    overlay = create_overlay(base_disk, tmp_path / "job", "vc-1-n0")
    assert overlay == tmp_path / "job" / "vc-1-n0.qcow2"
    info = image_info(overlay)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == base_disk and os.path.isabs(info["backing-filename"])
    assert info["backing-filename-format"] == "qcow2"
    # Writing through the overlay changes the overlay only.
    subprocess.run(["qemu-io", "-c", "write -P 0xab 0 1M", str(overlay)], check=True, capture_output=True)
    assert _sha(base_disk) == digest and os.stat(base_disk).st_mtime == mtime
    assert remove_overlay(overlay) is True
    assert remove_overlay(overlay) is False


def test_overlay_errors(base_disk, tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        create_overlay("/no/such/image.qcow2", tmp_path, "g")
    with pytest.raises(ImageError, match="absolute"):
        create_overlay("relative.qcow2", tmp_path, "g")
    raw = Path(base_disk).parent / "raw.img"  # where QEMU can reach it, as a catalog image must be
    raw.write_bytes(b"\0" * 1024 * 1024)
    raw.chmod(0o444)
    with pytest.raises(ImageError, match="cannot back an overlay as qcow2"):
        create_overlay(str(raw), tmp_path / "job", "g", base_format="qcow2")
    assert not (tmp_path / "job" / "g.qcow2").exists()
    unreadable = tmp_path / "secret.qcow2"
    unreadable.write_bytes(b"x")
    os.chmod(unreadable, 0)
    if os.geteuid() != 0:  # root reads anything; the check still exercises the path above
        with pytest.raises(ImageError, match="not readable"):
            create_overlay(str(unreadable), tmp_path, "g")
    with pytest.raises(HostError, match="cannot create overlay"):
        create_overlay(base_disk, "/proc/h5-no-such-dir", "g")


def test_private_libvirtd_notices_a_dead_libvirtd_and_restarts(node_netns):
    import json

    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    base = Path("/tmp") / f"h5lr{os.getpid()}"
    base.mkdir(mode=0o755)
    daemon = PrivateLibvirtd("r", base, netns=node_netns, warm=False)
    try:
        daemon.start()
        pid = json.loads((daemon.dir / "supervisor.json").read_text())["libvirtd_pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not daemon.running, 10)
        daemon.start()  # restarts only libvirtd under the same supervisor
        assert daemon.running
        restarted = json.loads((daemon.dir / "supervisor.json").read_text())
        assert restarted["libvirtd_pid"] != pid and restarted["restarts"] == 1
        with Hypervisor(daemon.uri) as hv:
            assert hv.list_domains() == []
    finally:
        daemon.stop()
        subprocess.run(["rm", "-rf", str(base)])
