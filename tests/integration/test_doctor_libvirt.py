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
