"""The seed ISO configures a guest through Debian's real cloud-init (slow: minutes).

guest/build-cloudinit-image.sh builds a bookworm image (mmdebstrap/debootstrap, cloud-init,
ifupdown, openssh-server; cached under $SLURM_VC_TEST_CACHE, default /var/cache/slurm-vc-test).
It boots under TCG with plain QEMU, direct kernel boot with the image's own kernel and initramfs,
the seed ISO as a second virtio disk.  From outside, with the job key over SSH: hostname,
address, MTU, /etc/hosts, permanent ARP entries, a peer reached by name, cloud-init finished
without errors and with a schema-valid user-data; then after a reboot the ARP entries are back.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from guest_harness import (
    ATF_PERM,
    CACHE,
    PrivateNet,
    Qemu,
    arp_table,
    build_guest_image,
    hosts_table,
    make_key,
    missing_tools,
    run,
)

from slurm_vc import seed
from slurm_vc.seed import SeedSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if os.geteuid() != 0:
    pytest.skip("needs root (chroot image build, network namespaces, taps)", allow_module_level=True)

BOOT_TIMEOUT = 240  # bound: ~40 s to SSH here under TCG (1 vCPU), cloud-init done a few s later
TOOLS = ("qemu-system-x86_64", "qemu-img", "nsenter", "ip", "ssh", "ssh-keygen", "mkfs.ext4", "python3")
SUBNET = "10.233.20"


@pytest.fixture(scope="module")
def cloud_image() -> Path:
    bootstrap = "mmdebstrap" if not missing_tools("mmdebstrap") else "debootstrap"
    return build_guest_image("build-cloudinit-image.sh", CACHE / "cloudinit", *TOOLS, bootstrap, timeout=900)


def test_real_cloud_init_applies_the_seed(cloud_image, tmp_path):
    key, public = make_key(tmp_path, "job")
    other_key, _ = make_key(tmp_path, "stranger")
    spec = SeedSpec(
        hostname="vcci20-0",
        instance_id="slurm-vc-test-20-0",
        ip=f"{SUBNET}.10",
        prefixlen=24,
        mac="52:54:00:e9:20:0a",
        mtu=9000,
        hosts=[
            (f"{SUBNET}.10", "vcci20-0 vcci20-0.vc"),
            (f"{SUBNET}.1", "sgthost"),
            (f"{SUBNET}.11", "vcci20-1"),
        ],
        arp=[
            (f"{SUBNET}.10", "52:54:00:e9:20:0a"),
            (f"{SUBNET}.1", "52:54:00:e9:20:01"),  # the bridge: real traffic uses this entry
            (f"{SUBNET}.11", "52:54:00:e9:20:0b"),  # nobody answers for it: only static
        ],
        ssh_authorized_keys=[public],
    )
    iso = seed.write_seed_iso(spec, str(tmp_path / "seed.iso"))
    overlay = tmp_path / "overlay.qcow2"
    base = cloud_image / "debian-cloudinit.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))

    with PrivateNet(host_ip=f"{SUBNET}.1", prefixlen=24, host_mac="52:54:00:e9:20:01", mtu=spec.mtu) as net:
        vm = Qemu(
            net=net,
            workdir=tmp_path,
            mac=spec.mac,
            kernel=str(cloud_image / "vmlinuz"),
            initrd=str(cloud_image / "initrd.img"),
            append="root=/dev/vda rw console=ttyS0",
            memory_mb=1024,
            drives=[f"file={overlay},if=virtio,format=qcow2", f"file={iso},if=virtio,format=raw,readonly=on"],
            ready_port=False,
        )
        with vm:
            seconds = vm.wait_for_ssh(key, "root", spec.ip, BOOT_TIMEOUT)
            print(f"\n{spec.hostname}: QEMU start -> SSH login {seconds:.1f} s")

            def inside(command: str, check: bool = True) -> subprocess.CompletedProcess:
                return net.ssh(key, "root", spec.ip, command, check=check, timeout=BOOT_TIMEOUT)

            status = inside("cloud-init status --wait --long", check=False).stdout
            print(f"{spec.hostname}: QEMU start -> cloud-init done {time.monotonic() - vm.started:.1f} s")
            assert "status: done" in status, f"cloud-init did not finish cleanly:\n{status}\n{vm.tail()}"
            schema = inside("cloud-init schema --system", check=False)
            assert schema.returncode == 0, f"user-data is not schema-valid:\n{schema.stdout}{schema.stderr}"
            assert net.ssh(other_key, "root", spec.ip, "true", check=False).returncode != 0

            assert inside("hostname").stdout.strip() == spec.hostname
            assert f"inet {spec.ip}/{spec.prefixlen} " in inside("ip -o -4 addr show dev eth0").stdout
            assert inside("cat /sys/class/net/eth0/mtu").stdout.strip() == str(spec.mtu)
            hosts = hosts_table(inside("cat /etc/hosts").stdout)
            for address, names in spec.hosts:
                for name in names.split():
                    assert hosts[name] == [address], f"{name} in /etc/hosts: {hosts.get(name)}"
            assert "127.0.1.1" not in sum(hosts.values(), [])
            assert inside("getent hosts vcci20-0").stdout.split()[0] == spec.ip
            assert_permanent_arp(inside("cat /proc/net/arp").stdout, spec)
            assert " 0% packet loss" in inside("ping -c 1 -W 5 sgthost").stdout

            # The ARP entries come back after a reboot (bootcmd runs on every boot).
            boot_id = inside("cat /proc/sys/kernel/random/boot_id").stdout.strip()
            rebooted = time.monotonic()
            inside("systemctl reboot", check=False)
            deadline = rebooted + BOOT_TIMEOUT
            while inside("cat /proc/sys/kernel/random/boot_id", check=False).stdout.strip() in ("", boot_id):
                assert time.monotonic() < deadline, f"no second boot after {BOOT_TIMEOUT} s:\n{vm.tail()}"
                assert vm.proc.poll() is None, f"QEMU exited during the reboot:\n{vm.tail()}"
                time.sleep(2)
            print(f"{spec.hostname}: reboot -> SSH login {time.monotonic() - rebooted:.1f} s")
            inside("cloud-init status --wait", check=False)
            assert_permanent_arp(inside("cat /proc/net/arp").stdout, spec)
            assert inside("hostname").stdout.strip() == spec.hostname
        assert vm.proc.poll() is not None
    assert not os.path.exists(f"/run/netns/{net.ns}")


def assert_permanent_arp(proc_net_arp: str, spec: SeedSpec) -> None:
    arp = arp_table(proc_net_arp)
    for address, mac in spec.peer_arp:
        assert address in arp, f"no ARP entry for {address}: {arp}"
        assert arp[address][0] == mac
        assert arp[address][1] & ATF_PERM, f"ARP entry for {address} is not permanent: {arp[address]}"
