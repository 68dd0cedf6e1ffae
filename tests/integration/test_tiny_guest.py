"""The tiny test guest (guest/build-tiny-guest.sh) configures itself from the slurm-vc seed.

Built from this machine's Debian packages, booted with plain qemu-system-x86_64 under TCG on a
private bridge, configured either from the NoCloud seed ISO (as a virtio disk or an IDE CD-ROM)
or from vc.* kernel parameters.  Checked from outside: the ready line, then over SSH with the
job key: hostname, address, MTU, /etc/hosts, permanent ARP entries, a peer reached by name.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from guest_harness import (
    ATF_PERM,
    CACHE,
    REPO,
    PrivateNet,
    Qemu,
    arp_table,
    build_guest_image,
    hosts_table,
    make_key,
)

from slurm_vc import seed
from slurm_vc.seed import SeedSpec

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces, taps)", allow_module_level=True)

READY_TIMEOUT = 90  # bound, not a measurement: ~5 s here under TCG, more on a loaded CI machine
TOOLS = ("qemu-system-x86_64", "nsenter", "ip", "ssh", "ssh-keygen", "busybox", "dropbear", "cpio")


@pytest.fixture(scope="module")
def tiny_image() -> Path:
    out = build_guest_image("build-tiny-guest.sh", CACHE / "tiny-guest", *TOOLS, timeout=300)
    assert (out / "vmlinuz").is_file() and (out / "initrd.img").is_file()
    return out


def guest_spec(subnet: int, public_key: str) -> SeedSpec:
    prefix = f"10.233.{subnet}"
    return SeedSpec(
        hostname=f"vctiny{subnet}-0",
        instance_id=f"slurm-vc-test-{subnet}-0",
        ip=f"{prefix}.10",
        prefixlen=24,
        mac=f"52:54:00:e9:{subnet:02x}:0a",
        mtu=9000,
        hosts=[
            (f"{prefix}.10", f"vctiny{subnet}-0 vctiny{subnet}-0.vc"),
            (f"{prefix}.1", "sgthost"),
            (f"{prefix}.11", f"vctiny{subnet}-1"),
        ],
        arp=[
            (f"{prefix}.10", f"52:54:00:e9:{subnet:02x}:0a"),
            (f"{prefix}.1", f"52:54:00:e9:{subnet:02x}:01"),  # the bridge: real traffic uses this entry
            (f"{prefix}.11", f"52:54:00:e9:{subnet:02x}:0b"),  # nobody answers for it: only static
        ],
        ssh_authorized_keys=[public_key],
    )


def check_guest_matches_spec(net: PrivateNet, vm: Qemu, key: Path, other_key: Path, spec: SeedSpec) -> None:
    ready = vm.wait_for_line(vm.ready_log, f"SLURM-VC-READY {spec.hostname}", READY_TIMEOUT)
    vm.wait_for_line(vm.console, f"SLURM-VC-READY {spec.hostname}", 5)
    print(f"\n{spec.hostname}: QEMU start -> ready line {ready:.1f} s")

    # Only the job key opens the guest.
    refused = net.ssh(other_key, "root", spec.ip, "true", check=False)
    assert refused.returncode != 0

    def inside(command: str) -> str:
        return net.ssh(key, "root", spec.ip, command).stdout

    assert inside("hostname").strip() == spec.hostname
    assert f"inet {spec.ip}/{spec.prefixlen} " in inside("ip -o -4 addr show dev eth0")
    assert inside("cat /sys/class/net/eth0/mtu").strip() == str(spec.mtu)
    assert inside("cat /sys/class/net/eth0/address").strip() == spec.mac

    hosts = hosts_table(inside("cat /etc/hosts"))
    for address, names in spec.hosts:
        for name in names.split():
            assert hosts[name] == [address], f"{name} in /etc/hosts: {hosts.get(name)}"
    assert "127.0.1.1" not in sum(hosts.values(), [])

    arp = arp_table(inside("cat /proc/net/arp"))
    for address, mac in spec.peer_arp:
        assert address in arp, f"no ARP entry for {address}: {arp}"
        assert arp[address][0] == mac
        assert arp[address][1] & ATF_PERM, f"ARP entry for {address} is not permanent: {arp[address]}"
    assert spec.ip not in arp

    # The host is reached by its name through the static entries (and answers back).
    assert "1 packets received" in inside("ping -c 1 -W 5 sgthost")


@pytest.mark.parametrize("attach", ["virtio-disk", "ide-cdrom"])
def test_tiny_guest_from_seed_iso(tiny_image, tmp_path, attach):
    subnet = {"virtio-disk": 1, "ide-cdrom": 2}[attach]
    key, public = make_key(tmp_path, "job")
    other_key, _ = make_key(tmp_path, "stranger")
    spec = guest_spec(subnet, public)
    iso = seed.write_seed_iso(spec, str(tmp_path / "seed.iso"))
    host_ip, host_mac = spec.hosts[1][0], spec.arp[1][1]
    with PrivateNet(host_ip=host_ip, prefixlen=24, host_mac=host_mac, mtu=spec.mtu) as net:
        vm = Qemu(
            net=net,
            workdir=tmp_path,
            mac=spec.mac,
            kernel=str(tiny_image / "vmlinuz"),
            initrd=str(tiny_image / "initrd.img"),
            append="console=ttyS0 quiet",
        )
        if attach == "virtio-disk":
            vm.drives.append(f"file={iso},if=virtio,format=raw,readonly=on")
            vm.agent_socket = str(tmp_path / "agent.sock")
        else:
            vm.cdrom = iso
        with vm:
            check_guest_matches_spec(net, vm, key, other_key, spec)
            assert "configuration from seed disk" in vm.console.read_text()
            if vm.agent_socket:
                packed = net.ssh(key, "root", spec.ip, "cat /etc/slurm-vc-tiny-guest").stdout
                if "agent=yes" in packed:  # qemu-guest-agent was installed on the build host
                    assert vm.agent("guest-ping") == {"return": {}}
        assert vm.proc.poll() is not None
    assert not os.path.exists(f"/run/netns/{net.ns}")


def test_tiny_guest_from_kernel_cmdline(tiny_image, tmp_path):
    key, public = make_key(tmp_path, "job")
    other_key, _ = make_key(tmp_path, "stranger")
    spec = guest_spec(3, public)
    host_ip, host_mac = spec.hosts[1][0], spec.arp[1][1]
    with PrivateNet(host_ip=host_ip, prefixlen=24, host_mac=host_mac, mtu=spec.mtu) as net:
        vm = Qemu(
            net=net,
            workdir=tmp_path,
            mac=spec.mac,
            kernel=str(tiny_image / "vmlinuz"),
            initrd=str(tiny_image / "initrd.img"),
            append=seed.kernel_cmdline(spec, base="console=ttyS0 quiet"),
        )
        with vm:
            check_guest_matches_spec(net, vm, key, other_key, spec)
            assert "configuration from kernel command line" in vm.console.read_text()
        assert vm.proc.poll() is not None
    assert not os.path.exists(f"/run/netns/{net.ns}")


def test_build_is_cached_and_reproducible(tiny_image, tmp_path):
    """A rerun with unchanged inputs skips the build; a fresh build gives the same bytes."""
    script = str(REPO / "guest" / "build-tiny-guest.sh")
    again = subprocess.run(["sh", script, str(tiny_image)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "up to date" in again.stdout
    fresh = subprocess.run(
        ["sh", script, str(tmp_path / "fresh")], capture_output=True, text=True, timeout=300
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "built" in fresh.stdout
    assert (tmp_path / "fresh" / "initrd.img").read_bytes() == (tiny_image / "initrd.img").read_bytes()


def test_tiny_guest_without_configuration_never_reports_ready(tiny_image, tmp_path):
    """No seed disk and no vc.* parameters: a failure line on the console, no ready line."""
    with PrivateNet(host_ip="10.233.4.1", prefixlen=24, host_mac="52:54:00:e9:04:01", mtu=1500) as net:
        vm = Qemu(
            net=net,
            workdir=tmp_path,
            mac="52:54:00:e9:04:0a",
            kernel=str(tiny_image / "vmlinuz"),
            initrd=str(tiny_image / "initrd.img"),
            append="console=ttyS0 quiet",
        )
        with vm:
            vm.wait_for_line(vm.console, "slurm-vc-init: done", READY_TIMEOUT)  # /init has finished
            console = vm.console.read_text()
            assert "SLURM-VC-FAILED no configuration" in console
            assert "SLURM-VC-READY" not in console
            assert not vm.ready_log.exists() or "SLURM-VC-READY" not in vm.ready_log.read_text()
