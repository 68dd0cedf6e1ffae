"""The real QEMU (through a private libvirtd) accepts a rendered domain and runs it as planned.

One guest, placed by ``place()`` on this machine's own topology (whole node, 2M hugepages, strict
NUMA), rendered by ``render_domain_xml`` and started with ``createXML``.  The kernel's first lines must
reach the console log (with the extra command line), the vCPUs and emulator threads must be pinned as
planned, QEMU must back guest memory with hugepages bound to the planned host node, and the tap must
carry the MTU.  Runs under TCG (``domain_type = "qemu"``: this machine's /dev/kvm cannot run a stock
guest kernel), so ``cpu_mode`` is a named model.

Isolation: a private network namespace holds the bridge and the tap, a private libvirtd (own mount
namespace and sockets) runs QEMU, the hugepages come from the pool manager and go back to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BRIDGE = "vcdqbr0"  # lives only inside the test's network namespace
TAP = "vcdqt0"
MTU = 9000
BOOT_TIMEOUT = 90.0  # seconds until the kernel banner is on the console (TCG, busy machine)


def _impossible() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespace, private libvirtd, hugepages)"
    for tool in ("ip", "unshare", "nsenter", "qemu-img", "qemu-system-x86_64", "libvirtd", "virtlogd"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed"
    if not glob.glob("/boot/vmlinuz-*"):
        return "no kernel under /boot (apt install linux-image-amd64)"
    if not os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB"):
        return "the kernel has no 2M hugepages"
    return None


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns():
    """A private network namespace with an MTU-9000 bridge; removed afterwards."""
    reason = _impossible()
    if reason:
        pytest.skip(reason)
    name = f"vcdq{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "add", BRIDGE, "mtu", str(MTU), "type", "bridge")
        _run("ip", "-n", name, "link", "set", BRIDGE, "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def libvirtd(netns):
    """A private libvirtd whose guests' taps land in ``netns``; stopped and removed afterwards."""
    from slurm_vc.sandbox.libvirtd import PrivateLibvirtd

    base = tempfile.mkdtemp(prefix="/tmp/vcdq-")  # short: the socket path must fit in sun_path
    os.chmod(base, 0o755)  # QEMU (libvirt-qemu) must traverse it to the hugetlbfs mounts inside
    daemon = PrivateLibvirtd("lv", base, netns=netns)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="vcdq-work-", dir="/var/tmp"))  # ext4: cache=none needs O_DIRECT
    os.chmod(path, 0o755)  # QEMU runs as libvirt-qemu and must reach the disks
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pinned_cpus(cpumap: tuple[bool, ...]) -> tuple[int, ...]:
    return tuple(cpu for cpu, on in enumerate(cpumap) if on)


def test_qemu_runs_a_rendered_domain_as_planned(libvirtd, netns, workdir):
    import libvirt

    from slurm_vc.config import config_from_mapping
    from slurm_vc.domain import GuestDevices, render_domain_xml
    from slurm_vc.hugepages import HugepagePool
    from slurm_vc.plan import place
    from slurm_vc.request import parse_request
    from slurm_vc.topology import read_topology
    from slurm_vc.units import MIB

    kernel = sorted(glob.glob("/boot/vmlinuz-*"))[-1]
    base_image = workdir / "base.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", str(base_image), "64M")
    config = config_from_mapping(
        {
            "state_dir": str(workdir / "state"),
            "host": {
                "domain_type": "qemu",
                "cpu_mode": "custom",
                "cpu_model": "qemu64",
                "hugepage_size": "2M",
                "reserved_memory": "256M",
            },
            "images": {"kern": {"disk": str(base_image), "kernel": kernel, "cmdline": "console=ttyS0"}},
        },
        source="test",
    )
    topology = read_topology("/")
    request = parse_request("kern,mem=256M", config)
    plan = place(request, config, topology, sorted(topology.cpus), 512 * MIB)
    assert plan.page_size == 2 * MIB and sum(plan.hugepages.values()) == 128

    job_dir = workdir / "state" / "jobs" / "dq"
    job_dir.mkdir(parents=True)
    os.chmod(job_dir, 0o755)
    overlay = job_dir / "overlay.qcow2"
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base_image), "-F", "qcow2", str(overlay))
    seed = job_dir / "seed.img"
    seed.write_bytes(b"\0" * MIB)
    name = f"vcdq{os.getpid()}-0"
    guest = GuestDevices(
        name=name,
        overlay_path=str(overlay),
        seed_path=str(seed),
        console_log=str(job_dir / "console.log"),
        mac="52:54:00:dd:00:01",
        bridge=BRIDGE,
        tap=TAP,
        mtu=MTU,
        ready_channel_path=str(job_dir / "ready"),
        agent_channel_path=str(job_dir / "agent.sock"),
        extra_cmdline="slurm_vc.test=1",
    )
    xml = render_domain_xml(plan, config, config.images["kern"], guest)

    pool = HugepagePool(config.state_dir)
    pool.reserve("dq", plan.page_size, plan.hugepages)
    conn = libvirt.open(libvirtd.uri)
    domain = None
    try:
        domain = conn.createXML(xml, 0)
        pid = int((libvirtd.dir / "run" / "qemu" / f"{name}.pid").read_text())
        qemu_args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")

        deadline = time.monotonic() + BOOT_TIMEOUT
        console = Path(guest.console_log)
        while time.monotonic() < deadline:
            text = console.read_text(errors="replace") if console.exists() else ""
            if "Command line:" in text:
                break
            time.sleep(0.2)
        assert "Linux version" in text, f"no kernel banner on the console within {BOOT_TIMEOUT:.0f} s"
        assert "Command line: console=ttyS0 slurm_vc.test=1" in text

        # vCPU and emulator pinning as planned
        pins = domain.vcpuPinInfo(0)
        assert {v: _pinned_cpus(pins[v]) for v in range(plan.vcpus)} == {
            v: (cpu,) for v, cpu in plan.vcpu_pins.items()
        }
        assert _pinned_cpus(domain.emulatorPinInfo(0)) == tuple(sorted(plan.emulator_cpus))

        # hugepage-backed guest NUMA cells bound to their host nodes; CPU model; NIC MTU
        joined = " ".join(qemu_args)
        for cell in plan.cells:
            assert f"host-nodes={cell.host_node}" in joined or f'"host-nodes":[{cell.host_node}]' in joined
        assert "hugepages-2M" in joined, "guest memory is not on the 2M hugetlbfs mount"
        assert qemu_args[qemu_args.index("-cpu") + 1].startswith("qemu64")
        assert "usb-uhci" not in joined and "usb-ehci" not in joined, "a USB controller was added"
        assert "virtio-balloon" not in joined
        assert "host_mtu=9000" in joined or '"host_mtu":9000' in joined
        link = _run("ip", "-n", netns, "-o", "link", "show", "dev", TAP)
        assert f"mtu {MTU}" in link and f"master {BRIDGE}" in link
    finally:
        if domain is not None:
            try:
                domain.destroy()
            except libvirt.libvirtError:
                pass
        conn.close()
        pool.release("dq")
