#!/usr/bin/env python3
"""Guest start -> ready and destroy through the libvirt driver vs plain QEMU, in one run.

    sudo .venv/bin/python bench/bench_guest_start.py [--runs 5] [--full]

Boots the tiny test guest (guest/build-tiny-guest.sh) under TCG, alternately through
``slurm_vc.hypervisor`` on a private libvirtd (slurm_vc.sandbox.libvirtd, child subreaper) and as a
plain ``qemu-system-x86_64`` child with the same kernel, initrd, memory, vCPU and console-to-file,
and reports medians: start -> ready-line, destroy, and the difference (the libvirt overhead; the
goal is < 0.5 s).  Also times overlay creation (qemu-img) and seed ISO creation (pycdlib).
``--full`` adds the whole prolog path (lifecycle.start_guest: plan, hugepages, overlay, seed,
domain, ready) and its teardown; it needs 2M hugepages and a bridge, made in a private netns.

Both paths detect readiness the same way: polling the console file every 50 ms for the line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from slurm_vc.config import Readiness  # noqa: E402
from slurm_vc.hypervisor import Hypervisor  # noqa: E402
from slurm_vc.readiness import SerialProbe, wait_ready  # noqa: E402
from slurm_vc.sandbox.libvirtd import PrivateLibvirtd  # noqa: E402

READY = "SLURM-VC-READY"
MEMORY_MIB = 128

XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
      <cmdline>{cmdline}</cmdline></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <devices>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


def guest_cmdline() -> str:
    """The kernel command line: console plus a static configuration (the guest needs one to be ready)."""
    from slurm_vc.seed import SeedSpec, kernel_cmdline

    spec = SeedSpec(
        hostname="bench", instance_id="bench", ip="10.231.1.1", prefixlen=16, mac="52:54:00:e7:01:01"
    )
    return kernel_cmdline(spec, base="console=ttyS0")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def wait_line(path: Path, timeout: float = 300) -> float:
    probe = SerialProbe(READY, None, str(path))
    start = time.monotonic()
    while not probe.poll():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"no ready line in {path}")
        time.sleep(0.05)
    return time.monotonic()


def run_libvirt(hv: Hypervisor, guest: dict, work: Path, index: int) -> tuple[float, float]:
    name = f"vc-bench{index}-h5"
    console = work / f"{name}.console"
    xml = XML.format(name=name, memory=MEMORY_MIB, console=console, cmdline=guest_cmdline(), **guest)
    start = time.monotonic()
    hv.start(xml)
    wait_ready(hv, name, Readiness(probe="serial"), 300, console_log=str(console))
    ready = time.monotonic() - start
    start = time.monotonic()
    hv.destroy(name)
    return ready, time.monotonic() - start


def run_plain(guest: dict, work: Path, index: int) -> tuple[float, float]:
    console = work / f"plain{index}.console"
    command = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "pc",
        "-cpu", "qemu64",
        "-m", str(MEMORY_MIB),
        "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", guest["kernel"],
        "-initrd", guest["initrd"],
        "-append", guest_cmdline(),
        "-serial", f"file:{console}",
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        ready = wait_line(console) - start
    finally:
        start = time.monotonic()
        proc.kill()
        proc.wait()
    return ready, time.monotonic() - start


def time_overlay_and_seed(work: Path, runs: int) -> tuple[list[float], list[float]]:
    from slurm_vc.images import create_overlay, remove_overlay
    from slurm_vc.seed import SeedSpec, remove_seed, write_seed_iso

    base = work / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
    overlay_times, seed_times = [], []
    spec = SeedSpec(
        hostname="vc1-0",
        instance_id="bench",
        ip="10.231.1.1",
        prefixlen=16,
        mac="52:54:00:e7:01:01",
        hosts=[(f"10.231.1.{i}", f"vc1-{i}.vc vc1-{i}") for i in range(1, 65)],
        arp=[(f"10.231.1.{i}", f"52:54:00:e7:01:{i:02x}") for i in range(1, 65)],
    )
    for i in range(runs * 4):
        start = time.monotonic()
        path = create_overlay(str(base), work, f"ov{i}")
        overlay_times.append(time.monotonic() - start)
        remove_overlay(path)
        start = time.monotonic()
        write_seed_iso(spec, str(work / f"seed{i}.iso"))
        seed_times.append(time.monotonic() - start)
        remove_seed(str(work / f"seed{i}.iso"))
    return overlay_times, seed_times


def run_full(daemon_base: Path, guest: dict, work: Path, runs: int) -> tuple[list[float], list[float], dict]:
    """lifecycle.start_guest -> ready and teardown, on a private libvirtd in a private netns."""
    from slurm_vc.config import config_from_mapping
    from slurm_vc.lifecycle import Environment, NodeJob, start_guest, teardown

    netns = f"h5bench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    daemon = PrivateLibvirtd("full", daemon_base, netns=netns)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "h5br0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "h5br0", "up"], check=True)
        daemon.start()
        secret = work / "secret"
        secret.write_bytes(os.urandom(32))
        config = config_from_mapping(
            {
                "state_dir": str(work / "state"),
                "runtime_dir": str(work / "run"),  # its hugepage ledgers: not the machine's /run/slurm-vc
                "job_key_secret": str(secret),
                "host": {
                    "libvirt_uri": daemon.uri,
                    "domain_type": "qemu",
                    "cpu_mode": "custom",
                    "cpu_model": "qemu64",
                    "reserved_memory": 0,
                    "reserved_cores": 1,
                },
                "network": {"bridge": "h5br0", "subnet": "10.231.0.0/16"},
                "timeouts": {"ready": 300},
                "images": {"tiny": {**guest, "cmdline": "console=ttyS0", "seed": "both"}},
            }
        )
        env = Environment(netns=netns)
        starts, stops, steps = [], [], {}
        for i in range(runs):
            job = NodeJob(
                job_id=900 + i,
                node="n0",
                nodes=("n0",),
                cpus=(0, 1),
                memory=512 << 20,
                vcluster=f"tiny,vcpus=1,mem={MEMORY_MIB}M",
            )
            start = time.monotonic()
            info = start_guest(job, config, env)
            starts.append(time.monotonic() - start)
            for step, seconds in info.timings.items():
                steps.setdefault(step, []).append(seconds)
            start = time.monotonic()
            teardown(job.job_id, config, env)
            stops.append(time.monotonic() - start)
        return starts, stops, {step: median(values) for step, values in steps.items()}
    finally:
        daemon.stop()
        subprocess.run(["ip", "netns", "del", netns])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="also time lifecycle.start_guest/teardown")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (private libvirtd)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="vcbench", dir="/tmp"))
    os.chmod(work, 0o755)
    daemon = PrivateLibvirtd("bench", work)
    try:
        out = work / "guest"
        subprocess.run(["sh", str(ROOT / "guest" / "build-tiny-guest.sh"), str(out)], check=True)
        guest = {"kernel": str(out / "vmlinuz"), "initrd": str(out / "initrd.img")}
        start = time.monotonic()
        uri = daemon.start()
        daemon_start = time.monotonic() - start
        lv_ready, lv_destroy, qm_ready, qm_destroy = [], [], [], []
        with Hypervisor(uri) as hv:
            run_libvirt(hv, guest, work, 0)  # warm-up: libvirtd probes QEMU's capabilities once
            run_plain(guest, work, 0)
            for i in range(1, args.runs + 1):  # interleaved, so machine load hits both alike
                ready, destroy = run_libvirt(hv, guest, work, i)
                lv_ready.append(ready)
                lv_destroy.append(destroy)
                ready, destroy = run_plain(guest, work, i)
                qm_ready.append(ready)
                qm_destroy.append(destroy)
        overlay_times, seed_times = time_overlay_and_seed(work, args.runs)
        full = run_full(work, guest, work, args.runs) if args.full else None
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"# bench_guest_start: {args.runs} runs each, medians; load {load:.1f} on {os.cpu_count()} CPUs")
    print(f"private libvirtd start: {daemon_start:.2f} s (once)")
    print("| path | start -> ready (s) | destroy (s) |")
    print("|---|---|---|")
    print(f"| libvirt driver (createXML) | {median(lv_ready):.2f} | {median(lv_destroy):.3f} |")
    print(f"| plain qemu-system-x86_64 | {median(qm_ready):.2f} | {median(qm_destroy):.3f} |")
    print(
        f"| **libvirt overhead** | **{median(lv_ready) - median(qm_ready):+.2f}** |"
        f" **{median(lv_destroy) - median(qm_destroy):+.3f}** |"
    )
    print(f"overlay create (qemu-img): {median(overlay_times) * 1000:.1f} ms;"
          f" seed ISO (64 hosts, pycdlib): {median(seed_times) * 1000:.1f} ms")  # fmt: skip
    if full:
        starts, stops, steps = full
        print(
            f"lifecycle.start_guest -> ready: {median(starts):.2f} s; teardown: {median(stops):.3f} s;"
            " steps: " + ", ".join(f"{step} {seconds:.3f}" for step, seconds in steps.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
