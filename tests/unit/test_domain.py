"""Domain XML: the typed elements, build_domain from a Plan, golden files, schema and test-driver checks.

Golden files live in tests/golden/domain/; regenerate them after an intended change with
``UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_domain.py`` and review the diff.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from lxml import etree

from slurm_vc.config import SiteConfig, config_from_mapping
from slurm_vc.domain import (
    Channel,
    Cpu,
    CpuTopology,
    CpuTune,
    Disk,
    GuestDevices,
    HugePage,
    MemoryBacking,
    NumaCell,
    Os,
    Serial,
    build_domain,
    canonical_xml,
    domain_to_string,
    render_domain,
    render_domain_xml,
    schema_errors,
)
from slurm_vc.plan import GuestCell, Plan
from slurm_vc.units import GIB, MIB

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "domain"
FIXTURES = REPO / "tests" / "fixtures" / "sysfs"
HAVE_VALIDATOR = shutil.which("virt-xml-validate") is not None and shutil.which("xmllint") is not None

# ------------------------------------------------------------------------------------------ helpers


def make_config(**host: object) -> SiteConfig:
    """A site config with a disk image and a direct-kernel image; host settings overridable."""
    return config_from_mapping(
        {
            "state_dir": "/var/lib/slurm-vc",
            "host": {"domain_type": "kvm", **host},
            "images": {
                "centos7-hpc": {"disk": "/var/lib/slurm-vc/images/centos7-hpc.qcow2"},
                "tiny": {
                    "kernel": "/var/lib/slurm-vc/images/tiny/vmlinuz",
                    "initrd": "/var/lib/slurm-vc/images/tiny/initrd.img",
                    "cmdline": "console=ttyS0 quiet",
                    "seed": "cmdline",
                },
            },
        },
        source="test",
    )


def make_guest(**overrides: object) -> GuestDevices:
    values: dict = dict(
        name="vc42-0",
        overlay_path="/var/lib/slurm-vc/jobs/42/overlay.qcow2",
        seed_path="/var/lib/slurm-vc/jobs/42/seed.img",
        console_log="/var/lib/slurm-vc/jobs/42/console.log",
        mac="52:54:00:2a:00:01",
        bridge="vcbr0",
        tap="vc42t0",
        mtu=9000,
        ready_channel_path="/var/lib/slurm-vc/jobs/42/ready",
        agent_channel_path="/var/lib/slurm-vc/jobs/42/agent.sock",
    )
    values.update(overrides)
    return GuestDevices(**values)


def cray_like_plan(page_size: int = 2 * MIB) -> Plan:
    """What placement gives for a whole Cray XC30 node (2 x 12 cores, 2 NUMA nodes), built by hand."""
    cell_memory = 30 * GIB
    return Plan(
        vcpus=24,
        memory=2 * cell_memory,
        page_size=page_size,
        vcpu_pins={i: i for i in range(24)},
        emulator_cpus=tuple(range(24)),
        cells=(
            GuestCell(id=0, host_node=0, vcpus=tuple(range(12)), memory=cell_memory),
            GuestCell(id=1, host_node=1, vcpus=tuple(range(12, 24)), memory=cell_memory),
        ),
        hugepages={0: cell_memory // page_size, 1: cell_memory // page_size} if page_size else {},
        sockets=2,
        cores_per_socket=12,
    )


def small_plan() -> Plan:
    """2 vCPUs on host CPUs 2,3 of node 1, emulator on CPU 1, normal pages."""
    return Plan(
        vcpus=2,
        memory=512 * MIB,
        page_size=0,
        vcpu_pins={0: 2, 1: 3},
        emulator_cpus=(1,),
        cells=(GuestCell(id=0, host_node=1, vcpus=(0, 1), memory=512 * MIB),),
        hugepages={},
        sockets=1,
        cores_per_socket=2,
    )


def check_schema(xml: str) -> None:
    """libvirt's own schema must accept the XML (skipped only when the validator is not installed)."""
    if not HAVE_VALIDATOR:
        pytest.skip("virt-xml-validate/xmllint not installed (apt install libvirt-clients libxml2-utils)")
    errors = schema_errors(xml)
    assert errors is None, errors


def check_test_driver(xml: str) -> None:
    """Define and undefine on libvirt's test driver: a fast semantic check (not proof QEMU accepts it)."""
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        domain = conn.defineXML(xml)
        try:
            defined = etree.fromstring(domain.XMLDesc(0).encode())
            ours = etree.fromstring(xml.encode())
            # libvirt kept what matters (it adds defaults, so compare selected facts, not everything)
            for path in ("vcpu", "memory", "cputune", "numatune", "memoryBacking", "cpu/numa"):
                assert (defined.find(path) is None) == (ours.find(path) is None), path
            assert len(defined.findall("cputune/vcpupin")) == len(ours.findall("cputune/vcpupin"))
        finally:
            domain.undefine()
    finally:
        conn.close()


def check_golden(name: str, xml: str) -> None:
    """Compare semantically with tests/golden/domain/<name>.xml; UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.xml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(xml)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 once and review the new file"
    assert canonical_xml(xml) == canonical_xml(path.read_text())


def attrs(root: etree._Element, path: str) -> list[dict[str, str]]:
    return [dict(element.attrib) for element in root.findall(path)]


# --------------------------------------------------------------------------------- element classes


def test_cpu_custom_needs_model():
    with pytest.raises(ValueError, match="model"):
        Cpu(mode="custom").to_xml()


def test_cpu_custom_model_and_fallback():
    element = Cpu(mode="custom", model="Skylake-Server", fallback="forbid").to_xml()
    assert element.get("mode") == "custom"
    assert element.findtext("model") == "Skylake-Server"
    assert element.find("model").get("fallback") == "forbid"


def test_cpu_passthrough_has_no_model_and_keeps_topology_and_cells():
    element = Cpu(
        topology=CpuTopology(2, 4, 2),
        cells=(NumaCell(0, (0, 1, 2, 3), 1024, mem_access="private"), NumaCell(1, (4, 5, 6, 7), 2048)),
    ).to_xml()
    assert element.find("model") is None
    assert dict(element.find("topology").attrib) == {"sockets": "2", "cores": "4", "threads": "2"}
    assert attrs(element, "numa/cell") == [
        {"id": "0", "cpus": "0-3", "memory": "1024", "unit": "KiB", "memAccess": "private"},
        {"id": "1", "cpus": "4-7", "memory": "2048", "unit": "KiB"},
    ]


def test_cputune_pins_in_vcpu_order_and_formats_sets():
    element = CpuTune(vcpu_pins={1: (5,), 0: (4, 6, 7)}, emulator_cpus=(0, 1, 3)).to_xml()
    assert attrs(element, "vcpupin") == [{"vcpu": "0", "cpuset": "4,6-7"}, {"vcpu": "1", "cpuset": "5"}]
    assert element.find("emulatorpin").get("cpuset") == "0-1,3"


def test_empty_cpu_set_is_refused():
    with pytest.raises(ValueError, match="empty"):
        CpuTune(vcpu_pins={0: ()}).to_xml()


def test_memory_backing_parts():
    element = MemoryBacking(hugepages=(HugePage(1048576, (0, 1)),), nosharepages=True, locked=True).to_xml()
    assert attrs(element, "hugepages/page") == [{"size": "1048576", "unit": "KiB", "nodeset": "0-1"}]
    assert element.find("nosharepages") is not None and element.find("locked") is not None
    assert MemoryBacking().is_empty()


def test_os_direct_kernel_boot_has_no_boot_device():
    element = Os(kernel="/k", initrd="/i", cmdline="console=ttyS0").to_xml()
    assert [child.tag for child in element] == ["type", "kernel", "initrd", "cmdline"]
    assert element.findtext("type") == "hvm"
    disk_boot = Os().to_xml()
    assert disk_boot.find("boot").get("dev") == "hd" and disk_boot.find("kernel") is None


def test_disk_overlay_and_readonly_seed():
    overlay = Disk("/o.qcow2", "vda", cache="none", io="native").to_xml()
    assert dict(overlay.find("driver").attrib) == {
        "name": "qemu",
        "type": "qcow2",
        "cache": "none",
        "io": "native",
    }
    seed = Disk("/seed.img", "vdb", format="raw", readonly=True).to_xml()
    assert seed.find("readonly") is not None and seed.find("driver").get("type") == "raw"
    assert dict(seed.find("target").attrib) == {"dev": "vdb", "bus": "virtio"}


def test_serial_kinds():
    pty = Serial("/log", kind="pty")
    assert pty.to_xml().find("log").get("file") == "/log"
    assert pty.console_xml().find("target").get("type") == "serial"
    as_file = Serial("/log", kind="file")
    assert as_file.to_xml().find("source").get("path") == "/log"
    assert as_file.console_xml().find("source").get("path") == "/log"
    with pytest.raises(ValueError):
        Serial("/log", kind="tcp").to_xml()


def test_channel_kinds():
    unix = Channel("org.qemu.guest_agent.0", "/a.sock").to_xml()
    assert dict(unix.find("source").attrib) == {"mode": "bind", "path": "/a.sock"}
    assert dict(unix.find("target").attrib) == {"type": "virtio", "name": "org.qemu.guest_agent.0"}
    as_file = Channel("org.slurm-vc.ready", "/ready", kind="file").to_xml()
    assert as_file.get("type") == "file" and as_file.find("source").get("path") == "/ready"
    with pytest.raises(ValueError):
        Channel("x", "/x", kind="pty").to_xml()


# ---------------------------------------------------------------------------------- plan -> domain


def test_cray_like_plan_gives_the_paper_configuration():
    root = render_domain(cray_like_plan(), make_config(), make_config().images["centos7-hpc"], make_guest())
    assert root.get("type") == "kvm"
    assert root.findtext("vcpu") == "24" and root.find("vcpu").get("placement") == "static"
    assert attrs(root, "cputune/vcpupin") == [{"vcpu": str(i), "cpuset": str(i)} for i in range(24)]
    assert dict(root.find("cpu/topology").attrib) == {"sockets": "2", "cores": "12", "threads": "1"}
    cells = attrs(root, "cpu/numa/cell")
    assert [c["cpus"] for c in cells] == ["0-11", "12-23"]
    assert cells[0]["memory"] == cells[1]["memory"] == str(30 * GIB // 1024)
    assert int(root.findtext("memory")) == 60 * GIB // 1024
    assert attrs(root, "memoryBacking/hugepages/page") == [
        {"size": "2048", "unit": "KiB", "nodeset": "0"},
        {"size": "2048", "unit": "KiB", "nodeset": "1"},
    ]
    assert root.find("memoryBacking/nosharepages") is not None
    assert root.find("memoryBacking/locked") is None
    assert dict(root.find("numatune/memory").attrib) == {"mode": "strict", "nodeset": "0-1"}
    assert attrs(root, "numatune/memnode") == [
        {"cellid": "0", "mode": "strict", "nodeset": "0"},
        {"cellid": "1", "mode": "strict", "nodeset": "1"},
    ]


def test_devices_of_a_disk_image_guest():
    root = render_domain(small_plan(), make_config(), make_config().images["centos7-hpc"], make_guest())
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    assert disks[0].find("source").get("file").endswith("overlay.qcow2")
    assert disks[1].find("readonly") is not None
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("mac").get("address") == "52:54:00:2a:00:01"
    assert nic.find("source").get("bridge") == "vcbr0"
    assert nic.find("target").get("dev") == "vc42t0"
    assert nic.find("mtu").get("size") == "9000"
    assert nic.find("model").get("type") == "virtio"
    names = [c.find("target").get("name") for c in root.findall("devices/channel")]
    assert names == ["org.qemu.guest_agent.0", "org.slurm-vc.ready"]
    assert root.find("devices/serial/log").get("file").endswith("console.log")
    assert root.find("devices/memballoon").get("model") == "none"
    assert root.find("devices/graphics") is None and root.find("devices/video") is None
    assert attrs(root, "devices/controller") == [{"type": "usb", "model": "none"}]
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("clock/timer").attrib == {"name": "kvmclock", "present": "yes"}
    assert [root.findtext(tag) for tag in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3


def test_normal_pages_keep_strict_numatune_and_no_hugepages():
    root = render_domain(small_plan(), make_config(), make_config().images["centos7-hpc"], make_guest())
    assert root.find("memoryBacking/hugepages") is None
    assert root.find("numatune/memory").get("nodeset") == "1"
    assert attrs(root, "numatune/memnode") == [{"cellid": "0", "mode": "strict", "nodeset": "1"}]
    assert attrs(root, "cputune/vcpupin") == [{"vcpu": "0", "cpuset": "2"}, {"vcpu": "1", "cpuset": "3"}]
    assert root.find("cputune/emulatorpin").get("cpuset") == "1"


def test_site_settings_reach_the_xml():
    config = make_config(
        domain_type="qemu",
        cpu_mode="custom",
        cpu_model="Haswell-noTSX",
        cpu_model_fallback="forbid",
        lock_memory=True,
        nosharepages=False,
        emulator="/usr/bin/qemu-system-x86_64",
    )
    root = render_domain(small_plan(), config, config.images["centos7-hpc"], make_guest())
    assert root.get("type") == "qemu"
    assert (
        root.findtext("cpu/model") == "Haswell-noTSX" and root.find("cpu/model").get("fallback") == "forbid"
    )
    assert root.find("memoryBacking/locked") is not None
    assert root.find("memoryBacking/nosharepages") is None
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


def test_direct_kernel_boot_appends_extra_cmdline_and_may_have_no_disk():
    config = make_config()
    guest = make_guest(overlay_path=None, seed_path=None, extra_cmdline="vc.host=vc42-0 vc.ip=10.96.0.2/24")
    root = render_domain(small_plan(), config, config.images["tiny"], guest)
    assert root.findtext("os/kernel") == "/var/lib/slurm-vc/images/tiny/vmlinuz"
    assert root.findtext("os/initrd") == "/var/lib/slurm-vc/images/tiny/initrd.img"
    assert root.findtext("os/cmdline") == "console=ttyS0 quiet vc.host=vc42-0 vc.ip=10.96.0.2/24"
    assert root.find("os/boot") is None
    assert root.findall("devices/disk") == []


def test_disk_image_without_overlay_is_a_caller_bug():
    config = make_config()
    with pytest.raises(ValueError, match="overlay"):
        build_domain(small_plan(), config, config.images["centos7-hpc"], make_guest(overlay_path=None))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sockets": 3}, "does not make"),
        ({"vcpu_pins": {0: 2}}, "pins vCPUs"),
        ({"cells": (GuestCell(0, 1, (0,), 512 * MIB),)}, "cells hold"),
        ({"memory": 256 * MIB}, "sum of its cells"),
        ({"page_size": GIB}, "multiple of"),
    ],
)
def test_inconsistent_plans_are_refused_before_libvirt_sees_them(change, message):
    import dataclasses

    plan = dataclasses.replace(small_plan(), **change)
    config = make_config()
    with pytest.raises(ValueError, match=message):
        build_domain(plan, config, config.images["centos7-hpc"], make_guest())


def test_uuid_and_name():
    guest = make_guest(uuid="3c0b2c39-5d0b-4a43-9b62-2e3b0e7a61aa")
    root = render_domain(small_plan(), make_config(), make_config().images["centos7-hpc"], guest)
    assert root.findtext("name") == "vc42-0"
    assert root.findtext("uuid") == "3c0b2c39-5d0b-4a43-9b62-2e3b0e7a61aa"


def test_canonical_xml_ignores_formatting_and_attribute_order_but_not_content():
    a = "<domain type='kvm'><name>x</name><vcpu placement='static'>2</vcpu></domain>"
    b = '<domain   type="kvm">\n  <name>x</name>\n  <vcpu placement="static">2</vcpu>\n</domain>\n'
    assert canonical_xml(a) == canonical_xml(b)
    assert canonical_xml(a) != canonical_xml(a.replace(">2<", ">3<"))
    assert canonical_xml("<a x='1' y='2'/>") == canonical_xml("<a y='2' x='1'/>")


# ------------------------------------------------------------------ golden, schema and test driver

HAND_CASES = {
    # name -> (plan, config overrides, image, guest overrides)
    "hand-cray-2m": (cray_like_plan, {}, "centos7-hpc", {}),
    "hand-cray-1g-locked": (lambda: cray_like_plan(page_size=GIB), {"lock_memory": True}, "centos7-hpc", {}),
    "hand-small-normal-pages": (
        small_plan,
        {"domain_type": "qemu", "cpu_mode": "host-model"},
        "centos7-hpc",
        {},
    ),
    "hand-tiny-kernel-boot": (
        small_plan,
        {"domain_type": "qemu", "cpu_mode": "custom", "cpu_model": "qemu64"},
        "tiny",
        {"overlay_path": None, "seed_path": None, "serial_kind": "file", "extra_cmdline": "vc.ready=1"},
    ),
}


@pytest.mark.parametrize("case", sorted(HAND_CASES))
def test_hand_built_plans_golden_schema_and_test_driver(case):
    plan_factory, host, image, guest_overrides = HAND_CASES[case]
    config = make_config(**host)
    xml = render_domain_xml(plan_factory(), config, config.images[image], make_guest(**guest_overrides))
    check_golden(case, xml)
    check_schema(xml)
    check_test_driver(xml)


def test_schema_check_can_fail():
    """The validator really rejects broken XML (so the schema checks above mean something)."""
    if not HAVE_VALIDATOR:
        pytest.skip("virt-xml-validate/xmllint not installed")
    xml = render_domain_xml(small_plan(), make_config(), make_config().images["centos7-hpc"], make_guest())
    broken = xml.replace('placement="static"', 'placement="everywhere"')
    assert schema_errors(broken) is not None


# --------------------------------------------------------------- recorded hosts: place() -> render

# fixture -> (whole-node CPU list, memory Slurm would give the job on that node)
WHOLE_NODE = {
    "cray-xc30": ("0-23", "62G"),
    "smt-2s4n": ("0-63", "188G"),
    "vm-2core": ("0-1", "22G"),
    "big-256": ("0-255", "500G"),
}


def plan_fixture(fixture: str, request_text: str = "centos7-hpc", **host: object):
    """Read a recorded host, place a whole-node allocation on it and return (config, plan)."""
    from slurm_vc.plan import place
    from slurm_vc.request import parse_request
    from slurm_vc.topology import read_topology
    from slurm_vc.units import parse_cpulist, parse_size

    config = make_config(**host)
    cpus, memory = WHOLE_NODE[fixture]
    topology = read_topology(str(FIXTURES / fixture))
    request = parse_request(request_text, config)
    return config, place(request, config, topology, parse_cpulist(cpus), parse_size(memory))


@pytest.mark.parametrize("fixture", sorted(WHOLE_NODE))
def test_fixture_whole_node_golden_schema_and_test_driver(fixture):
    config, plan = plan_fixture(fixture)
    xml = render_domain_xml(plan, config, config.images["centos7-hpc"], make_guest())
    check_golden(f"fixture-{fixture}", xml)
    check_schema(xml)
    check_test_driver(xml)


def test_fixture_direct_kernel_boot_normal_pages_golden():
    config, plan = plan_fixture("smt-2s4n", "tiny,vcpus=6,mem=6G,pages=none", domain_type="qemu")
    guest = make_guest(overlay_path=None, seed_path=None, extra_cmdline="vc.ready=1")
    xml = render_domain_xml(plan, config, config.images["tiny"], guest)
    check_golden("fixture-smt-2s4n-tiny-6vcpu", xml)
    check_schema(xml)
    check_test_driver(xml)


def test_cray_xc30_whole_node_reproduces_the_paper_configuration():
    """Seed paper: 24 vCPUs pinned i->i, two NUMA cells 0-11/12-23 of equal memory, 2M hugepages
    per cell, strict numatune with a memnode per cell, topology sockets=2 cores=12 threads=1."""
    config, plan = plan_fixture("cray-xc30")
    root = render_domain(plan, config, config.images["centos7-hpc"], make_guest())
    assert root.findtext("vcpu") == "24"
    assert attrs(root, "cputune/vcpupin") == [{"vcpu": str(i), "cpuset": str(i)} for i in range(24)]
    cells = attrs(root, "cpu/numa/cell")
    assert [(c["id"], c["cpus"]) for c in cells] == [("0", "0-11"), ("1", "12-23")]
    assert cells[0]["memory"] == cells[1]["memory"] and cells[0]["unit"] == "KiB"
    assert int(cells[0]["memory"]) % 2048 == 0, "each cell is a whole number of 2M pages"
    assert int(root.findtext("memory")) == 2 * int(cells[0]["memory"])
    assert attrs(root, "memoryBacking/hugepages/page") == [
        {"size": "2048", "unit": "KiB", "nodeset": "0"},
        {"size": "2048", "unit": "KiB", "nodeset": "1"},
    ]
    assert dict(root.find("numatune/memory").attrib) == {"mode": "strict", "nodeset": "0-1"}
    assert attrs(root, "numatune/memnode") == [
        {"cellid": "0", "mode": "strict", "nodeset": "0"},
        {"cellid": "1", "mode": "strict", "nodeset": "1"},
    ]
    assert dict(root.find("cpu/topology").attrib) == {"sockets": "2", "cores": "12", "threads": "1"}
    check_schema(domain_to_string(root))
