"""doctor's libvirt check against a real (private) libvirtd: what createXML will need, asked before a job."""

from __future__ import annotations

import pytest

from slurm_vc.config import config_from_mapping
from slurm_vc.doctor import FAIL, PASS, HostPaths, check_libvirt

pytestmark = pytest.mark.integration


def _check(uri: str, **host):
    config = config_from_mapping({"host": {"libvirt_uri": uri, "domain_type": "qemu", **host}})
    return check_libvirt(config, HostPaths())


def test_libvirt_runs_the_configured_guests(libvirt_uri):
    good = _check(libvirt_uri, cpu_mode="custom", cpu_model="qemu64")
    assert good.status == PASS and "runs qemu guests" in good.detail, good.detail


def test_an_emulator_libvirt_cannot_use_fails(libvirt_uri):
    bad = _check(libvirt_uri, cpu_mode="host-model", emulator="/usr/bin/qemu-system-none")
    assert bad.status == FAIL and "cannot run qemu guests with /usr/bin/qemu-system-none" in bad.detail
    assert "host.emulator" in bad.fix


def test_an_unknown_cpu_model_fails(libvirt_uri):
    bad = _check(libvirt_uri, cpu_mode="custom", cpu_model="NoSuchCPU-v9")
    assert bad.status == FAIL and "'NoSuchCPU-v9' is unknown to this QEMU" in bad.detail


def test_images_and_state_dir_are_judged_as_libvirts_qemu_user(libvirt_uri, tmp_path, share_with_group):
    """doctor asks libvirt who QEMU runs as, not a guess: a file QEMU's group may read passes, the
    same file closed to that group fails naming the user; qemu.conf is not read (a bogus path)."""
    import os
    import tempfile
    from pathlib import Path

    from slurm_vc.doctor import check_images, check_state_dir
    from slurm_vc.hypervisor import Hypervisor

    with Hypervisor(libvirt_uri) as hypervisor:
        qemu = hypervisor.qemu_user("qemu")
    group = min(gid for gid in qemu.gids if gid != 0)
    paths = HostPaths(qemu_conf=str(tmp_path / "no-qemu.conf"))
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="vc-doctor-qemu-"))
    try:
        os.chmod(base, 0o755)
        shared = base / "shared"
        shared.mkdir()
        image = shared / "base.qcow2"
        image.write_bytes(b"QFI\xfb")
        share_with_group(image, group)
        host = {"libvirt_uri": libvirt_uri, "domain_type": "qemu"}
        config = config_from_mapping(
            {"host": host, "state_dir": str(shared / "state"), "images": {"g": {"disk": str(image)}}}
        )
        [good] = check_images(config, paths)
        assert good.status == PASS, good.detail
        assert check_state_dir(config, paths).status == PASS
        os.chown(image, 0, 0)
        [bad] = check_images(config, paths)
        assert bad.status == FAIL and f"not readable by QEMU's user {qemu.name}" in bad.detail
    finally:
        import shutil

        shutil.rmtree(base)


def test_kvm_access_is_judged_as_libvirts_qemu_user(libvirt_uri, tmp_path):
    """qemu.conf here says root, who may open a root-only device; libvirt runs QEMU as another user,
    who may not: the check asks libvirt and judges that user."""
    import os

    from slurm_vc.doctor import WARN, check_kvm_access
    from slurm_vc.hypervisor import Hypervisor

    with Hypervisor(libvirt_uri) as hypervisor:
        qemu = hypervisor.qemu_user("qemu")
    assert qemu.uid > 0, "this test needs a libvirtd that runs QEMU as a non-root user"
    device = tmp_path / "kvm"
    device.write_text("")
    os.chown(device, 0, 0)
    device.chmod(0o600)
    qemu_conf = tmp_path / "qemu.conf"
    qemu_conf.write_text('user = "root"\n')
    paths = HostPaths(dev_kvm=str(device), qemu_conf=str(qemu_conf))
    config = config_from_mapping({"host": {"libvirt_uri": libvirt_uri, "domain_type": "qemu"}})
    [closed] = check_kvm_access(config, paths)
    assert closed.status == WARN and f"QEMU user {qemu.name}:" in closed.detail, closed.detail
    os.chown(device, 0, min(gid for gid in qemu.gids if gid != 0))
    device.chmod(0o660)
    [shared] = check_kvm_access(config, paths)
    assert shared.status == PASS and shared.detail.endswith(f"QEMU user {qemu.name}"), shared.detail
