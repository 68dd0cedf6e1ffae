"""The time-to-cluster benchmark's plain-QEMU baseline: libvirt's QEMU argv made runnable alone.

The fixture is the argv libvirt 9.0 gave QEMU 7.2 for a sandbox guest (`tiny`, hugepage-backed, seed
disk, agent and ready channels, NIC on a tap, RNG), read from /proc/<pid>/cmdline.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGV = json.loads((ROOT / "tests/fixtures/libvirt-9.0-qemu-7.2-argv.json").read_text())
SEED = "/var/lib/slurm-vc-sandbox/vcx/nodes/node1/state/jobs/1900002/seed.iso"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_ttc", ROOT / "bench/bench_time_to_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _bench()


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [value for option, value in zip(argv, argv[1:]) if option == flag]


def test_job_files_names_the_seed_image():
    assert bench.job_files(ARGV) == [SEED]


def test_standalone_argv_keeps_the_virtual_machine_and_drops_what_only_libvirt_provides(tmp_path):
    out = bench.standalone_argv(ARGV, tmp_path, "/mnt/huge", {SEED: "/copy/seed.iso"})
    text = "\n".join(out)
    assert "-S" not in out and "-add-fd" not in out
    assert "fd=" not in text and "/dev/fdset" not in text and "masterKey0" not in text
    assert "charmonitor" not in text
    # The same machine: every device, the CPU model, machine type, kernel and NUMA layout unchanged.
    for flag in ("-device", "-cpu", "-machine", "-kernel", "-initrd", "-append", "-numa", "-smp", "-m"):
        assert _pairs(out, flag) == _pairs(ARGV, flag), flag
    memory = [json.loads(v) for v in _pairs(out, "-object") if "memory-backend-file" in v]
    assert [m["mem-path"] for m in memory] == ["/mnt/huge"] and memory[0]["prealloc"] is True
    assert [json.loads(v).get("filename") for v in _pairs(out, "-blockdev")][0] == "/copy/seed.iso"
    assert _pairs(out, "-netdev") == ["hubport,hubid=0,id=hostnet0"]
    chardevs = _pairs(out, "-chardev")
    assert f"file,id=charserial0,path={tmp_path / 'charserial0.log'}" in chardevs
    assert f"file,id=charchannel1,path={tmp_path / 'charchannel1.log'}" in chardevs
    assert f"socket,id=charchannel0,path={tmp_path / 'charchannel0.sock'},server=on,wait=off" in chardevs
    assert _pairs(out, "-name")[0].startswith("guest=plain-vc-")


def test_standalone_argv_refuses_a_file_descriptor_it_does_not_know(tmp_path):
    argv = [*ARGV, "-object", '{"qom-type":"rng-random","id":"r","filename":"/dev/fdset/7"}']
    with pytest.raises(ValueError, match="without libvirt"):
        bench.standalone_argv(argv, tmp_path, "/mnt/huge", {})


def test_guest_spec_counts_the_hugepages_and_pins_of_the_guest():
    domain = (
        "<domain type='qemu'><name>vc-1900002-node1</name><memory unit='KiB'>262144</memory>"
        "<memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/></hugepages></memoryBacking>"
        "<vcpu>1</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/></cputune>"
        "<os><type>hvm</type><kernel>/k</kernel></os></domain>"
    )
    spec = bench.guest_spec(domain, ARGV, {})
    assert spec.page_size == 2 * 1024 * 1024
    assert spec.pages == {0: 128}  # 256 MiB of RAM on host node 0
    assert spec.cpus == "0"


def test_guest_uptime_from_the_tiny_guests_console():
    console = "SLURM-VC-READY vc7-0\nslurm-vc-init: ready after 2.47 s of guest uptime\n"
    assert bench.guest_uptime(console) == 2.47
    assert bench.guest_uptime("SLURM-VC-READY vc7-0\n") is None


def test_paired_overheads_per_repetition():
    data = {
        "plain": [{"sbatch -> script start": 0.5, "without scheduler wait": 0.1}] * 2,
        "vc": [
            {"sbatch -> script start": 9.0, "without scheduler wait": 8.4, "guest uptime at ready": 6.0},
            {"sbatch -> script start": 11.0, "without scheduler wait": 10.6},  # no uptime logged
        ],
        "qemu": [7.5, 7.0],
        "qemu_uptime": [6.5, 6.0],
    }
    assert bench.paired_overheads(data) == pytest.approx([1.0, 3.5])
    assert bench.paired_overheads(data, "without scheduler wait") == pytest.approx([0.8, 3.5])
    # By the guests' own clocks: vc 9.0 - 6.0 - 0.5 - (7.5 - 6.5) = 1.5; rep 2 has no uptime.
    assert bench.paired_overheads(data, own_clock=True) == pytest.approx([1.5])
    assert bench.paired_overheads(data, "without scheduler wait", own_clock=True) == pytest.approx([1.3])
    # Results written before the uptime was recorded have no "qemu_uptime".
    del data["qemu_uptime"]
    assert bench.paired_overheads(data, own_clock=True) == []


CTLD_LOG = """\
[2026-12-03T14:04:55.638] _slurm_rpc_submit_batch_job: JobId=600000 InitPrio=4294901759 usec=650
[2026-12-03T14:04:56.145] sched: Allocate JobId=600000 NodeList=node1 #CPUs=1 Partition=vc
[2026-12-03T14:04:56.194] _job_complete: JobId=600000 WEXITSTATUS 0
[2026-12-03T14:05:00.152] sched: Allocate JobId=600001 NodeList=node1 #CPUs=1 Partition=vc
[2026-12-03T14:05:01.034] _job_complete: JobId=600001 done
"""


def test_last_scheduler_pass_is_the_latest_allocation():
    assert bench.last_scheduler_pass(CTLD_LOG) == bench.timeline.parse_log_time("2026-12-03T14:05:00.152")
    submit_only = "[2026-12-03T14:04:55.638] _slurm_rpc_submit_batch_job: JobId=1\n"
    assert bench.last_scheduler_pass(submit_only) is None


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (100.0, 100.5),  # the pass just happened: half a cycle later
        (100.46, 101.5),  # too close to 100.5 to make it: the next cycle
        (102.2, 102.5),  # passes later, at the same phase
        (102.6, 103.5),
    ],
)
def test_next_submit_time_keeps_the_phase(now, expected):
    assert bench.next_submit_time(100.0, now) == pytest.approx(expected)
