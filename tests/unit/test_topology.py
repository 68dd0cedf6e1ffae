"""Host topology reader: recorded fixtures, odd hosts built in a tmp dir, malformed files, the live host."""

from __future__ import annotations

import errno
import filecmp
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from slurm_vc import topology as topology_module
from slurm_vc.errors import HostError
from slurm_vc.topology import human_size, read_topology, sysfs_root, topology_to_dict

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SYSFS = FIXTURES / "sysfs"
M2 = 2 * 1024 * 1024
G1 = 1024 * 1024 * 1024


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_sysfs", FIXTURES / "make_sysfs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_sysfs"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


make_sysfs = _load_generator()


def _tree_differences(left: Path, right: Path) -> list[str]:
    compare = filecmp.dircmp(left, right)
    diffs = [str(left / name) for name in compare.left_only + compare.right_only + compare.diff_files]
    for name in compare.common_files:  # dircmp compares shallowly; compare contents for real
        if (left / name).read_bytes() != (right / name).read_bytes():
            diffs.append(str(left / name))
    for sub in compare.common_dirs:
        diffs += _tree_differences(left / sub, right / sub)
    return diffs


@pytest.mark.parametrize("name", sorted(make_sysfs.HOSTS))
def test_fixtures_match_generator(name, tmp_path):
    make_sysfs.write_host(tmp_path / name, make_sysfs.HOSTS[name])
    assert _tree_differences(SYSFS / name, tmp_path / name) == []


def test_cray_xc30():
    topo = read_topology(str(SYSFS / "cray-xc30"))
    assert topo.sockets == [0, 1]
    assert sorted(topo.nodes) == [0, 1]
    assert topo.nodes[0].cpus == tuple(range(12))
    assert topo.nodes[1].cpus == tuple(range(12, 24))
    assert len(topo.cpus) == 24 and len(topo.cores()) == 24
    assert topo.threads_per_core == 1
    assert all(cpu.siblings == (cpu.id,) for cpu in topo.cpus.values())
    # Ivy Bridge core ids have gaps (0-5, 8-13); (socket, core) still identifies the core.
    assert [topo.cpus[c].core for c in range(12)] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    assert topo.core_key(12) == (1, 0)
    assert topo.cpus[13].socket == 1 and topo.cpus[13].node == 1
    node = topo.nodes[0]
    assert node.mem_total == (32 * 1024 * 1024 - 262_144) * 1024
    assert 0 < node.mem_free < node.mem_total
    assert node.hugepages_total == {M2: 512, G1: 2}
    assert node.hugepages_free == {M2: 384, G1: 1}
    assert topo.page_sizes == [M2, G1]
    assert 63 * G1 < topo.mem_total < 64 * G1


def test_smt_host_with_more_nodes_than_sockets():
    topo = read_topology(str(SYSFS / "smt-2s4n"))
    assert topo.sockets == [0, 1]
    assert len(topo.nodes) == 4
    assert len(topo.cpus) == 64 and len(topo.cores()) == 32
    assert topo.threads_per_core == 2
    for cpu in range(32):
        assert topo.cpus[cpu].siblings == (cpu, cpu + 32)
        assert topo.cpus[cpu + 32].siblings == (cpu, cpu + 32)
        assert topo.core_key(cpu) == topo.core_key(cpu + 32)
        assert topo.node_of(cpu) == topo.node_of(cpu + 32) == cpu // 8
    assert topo.nodes[1].cpus == tuple(range(8, 16)) + tuple(range(40, 48))
    # core ids repeat across sockets: socket 0 core 0 and socket 1 core 0 are different cores
    assert topo.cpus[0].core == topo.cpus[16].core == 0
    assert topo.core_key(0) != topo.core_key(16)
    assert {topo.cpus[c].socket for c in topo.nodes[2].cpus} == {1}
    assert topo.nodes[3].hugepages_total == {M2: 1024, G1: 4}


def test_vm_2core():
    topo = read_topology(str(SYSFS / "vm-2core"))
    assert topo.sockets == [0]
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == (0, 1)
    assert topo.core_key(0) != topo.core_key(1)
    assert 23 * G1 < topo.nodes[0].mem_total < 24 * G1
    assert topo.nodes[0].hugepages_free == {M2: 16, G1: 0}


def test_big_256():
    topo = read_topology(str(SYSFS / "big-256"))
    assert len(topo.cpus) == 256 and len(topo.cores()) == 128
    assert len(topo.nodes) == 8 and topo.sockets == [0, 1]
    assert topo.cpus[200].siblings == (72, 200)
    assert all(len(node.cpus) == 32 for node in topo.nodes.values())
    assert {topo.cpus[c].socket for c in topo.nodes[4].cpus} == {1}


def test_root_containing_sys_is_accepted(tmp_path):
    make_sysfs.write_host(tmp_path / "sys", make_sysfs.HOSTS["cray-xc30"])
    assert sysfs_root(str(tmp_path)) == str(tmp_path / "sys")
    topo = read_topology(str(tmp_path))
    assert len(topo.cpus) == 24 and len(topo.nodes) == 2


def _spec(**changes):
    base = dict(
        sockets=1,
        cores_per_socket=4,
        threads_per_core=2,
        nodes_per_socket=1,
        mem_per_node_kb=8 * 1024 * 1024,
        hugepages={2048: (10, 7)},
    )
    base.update(changes)
    return make_sysfs.HostSpec(**base)


def test_host_without_numa_dirs_uses_proc_meminfo(tmp_path):
    make_sysfs.write_host(tmp_path / "sys", _spec(numa=False))
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(
        "MemTotal:        8000000 kB\nMemFree:         6000000 kB\n"
        "Active(anon):      10 kB\nHugePages_Total:  10\n"
    )
    topo = read_topology(str(tmp_path))
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == tuple(range(8))
    assert all(cpu.node == 0 for cpu in topo.cpus.values())
    assert topo.nodes[0].mem_total == 8_000_000 * 1024
    assert topo.nodes[0].mem_free == 6_000_000 * 1024
    # hugepage pools of a non-NUMA kernel live in kernel/mm/hugepages
    assert topo.nodes[0].hugepages_total == {M2: 10}
    assert topo.nodes[0].hugepages_free == {M2: 7}


def test_sysfs_only_tree_without_numa_has_unknown_memory(tmp_path):
    make_sysfs.write_host(tmp_path, _spec(numa=False))
    topo = read_topology(str(tmp_path))
    assert topo.nodes[0].mem_total == 0
    assert "memory unknown" in topo.summary()


def test_offline_cpus_are_left_out(tmp_path):
    make_sysfs.write_host(tmp_path, _spec(offline=(3, 6)))
    topo = read_topology(str(tmp_path))
    assert sorted(topo.cpus) == [0, 1, 2, 4, 5, 7]
    assert 3 not in topo.nodes[0].cpus
    assert topo.cpus[7].siblings == (7,)  # its sibling 3 is offline


def test_per_cpu_online_files_without_global_list(tmp_path):
    make_sysfs.write_host(tmp_path, _spec(offline=(5,)))
    (tmp_path / "devices/system/cpu/online").unlink()
    topo = read_topology(str(tmp_path))
    assert 5 not in topo.cpus and 0 in topo.cpus and len(topo.cpus) == 7


@pytest.fixture
def small_host(tmp_path) -> Path:
    make_sysfs.write_host(tmp_path, _spec())
    return tmp_path


@pytest.mark.parametrize(
    "relative, content",
    [
        ("devices/system/cpu/cpu2/topology/core_id", "two"),
        ("devices/system/cpu/cpu2/topology/physical_package_id", ""),
        ("devices/system/cpu/cpu2/topology/thread_siblings_list", "2-x"),
        ("devices/system/cpu/cpu2/topology/thread_siblings_list", "3"),
        ("devices/system/cpu/online", "0-3,"),
        ("devices/system/node/node0/cpulist", "zero"),
        ("devices/system/node/node0/meminfo", "Node 0 MemTotal: lots\n"),
        ("devices/system/node/node0/meminfo", "Node 0 MemFree: 5 kB\n"),
        ("devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "1.5"),
    ],
)
def test_malformed_file_names_the_file(small_host, relative, content):
    (small_host / relative).write_text(content)
    with pytest.raises(HostError) as info:
        read_topology(str(small_host))
    assert str(small_host / relative) in str(info.value)


@pytest.mark.parametrize(
    "relative",
    ["devices/system/cpu/cpu1/topology/core_id", "devices/system/node/node0/meminfo"],
)
def test_missing_file_names_the_file(small_host, relative):
    (small_host / relative).unlink()
    with pytest.raises(HostError, match=str(small_host / relative)):
        read_topology(str(small_host))


def test_cpu_in_no_node_is_an_error(small_host):
    (small_host / "devices/system/node/node0/cpulist").write_text("0-6\n")
    with pytest.raises(HostError, match="online CPU 7 is in no node"):
        read_topology(str(small_host))


def test_cpu_in_two_nodes_is_an_error(tmp_path):
    make_sysfs.write_host(tmp_path, _spec(sockets=2, cores_per_socket=2, threads_per_core=1))
    (tmp_path / "devices/system/node/node1/cpulist").write_text("1-3\n")
    with pytest.raises(HostError, match="CPU 1 is also listed by node 0"):
        read_topology(str(tmp_path))


def test_not_a_sysfs_tree(tmp_path):
    with pytest.raises(HostError, match="not a sysfs tree"):
        read_topology(str(tmp_path))


def test_no_online_cpus(small_host):
    (small_host / "devices/system/cpu/online").write_text("\n")
    with pytest.raises(HostError, match="no online CPUs"):
        read_topology(str(small_host))


@pytest.fixture
def vm_copy(tmp_path) -> Path:
    """A writable copy of the recorded vm-2core host, to break."""
    root = tmp_path / "vm-2core"
    shutil.copytree(SYSFS / "vm-2core", root)
    return root


def _assert_one_line_host_error(info, path) -> None:
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize(
    "relative",
    ["devices/system/node", "devices/system/node/node0/hugepages", "devices/system/cpu/cpu1/topology"],
)
def test_file_where_a_directory_should_be_names_the_path(vm_copy, relative):
    shutil.rmtree(vm_copy / relative)
    (vm_copy / relative).write_text("not a directory\n")
    with pytest.raises(HostError) as info:
        read_topology(str(vm_copy))
    _assert_one_line_host_error(info, vm_copy / relative)


def test_file_where_the_non_numa_pool_directory_should_be(vm_copy):
    shutil.rmtree(vm_copy / "devices/system/node")
    (vm_copy / "kernel/mm").mkdir(parents=True)
    (vm_copy / "kernel/mm/hugepages").write_text("x\n")
    with pytest.raises(HostError, match="Not a directory") as info:
        read_topology(str(vm_copy))
    _assert_one_line_host_error(info, vm_copy / "kernel/mm/hugepages")


@pytest.mark.parametrize(
    "relative", ["devices/system/cpu", "devices/system/node", "devices/system/node/node0/hugepages"]
)
@pytest.mark.parametrize(
    "error",
    [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EIO, "Input/output error")],
    ids=["EACCES", "EIO"],
)
def test_unlistable_directory_names_the_path(vm_copy, monkeypatch, relative, error):
    """As root, chmod 000 does not stop listdir: make it fail the way it does for 'nobody'."""
    real_listdir = os.listdir
    target = str(vm_copy / relative)

    def listdir(path):
        if str(path) == target:
            raise error
        return real_listdir(path)

    monkeypatch.setattr(topology_module.os, "listdir", listdir)
    with pytest.raises(HostError, match=error.strerror) as info:
        read_topology(str(vm_copy))
    _assert_one_line_host_error(info, target)


HUGE = "9" * 5000  # beyond CPython's 4300-digit int() limit


@pytest.mark.parametrize(
    "relative, content",
    [
        ("devices/system/cpu/cpu0/topology/core_id", HUGE),
        ("devices/system/cpu/cpu1/topology/physical_package_id", HUGE + "\n"),
        ("devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages", HUGE),
        ("devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "1" * 21),
        ("devices/system/node/node0/meminfo", f"Node 0 MemTotal: {HUGE} kB\nNode 0 MemFree: 5 kB\n"),
        ("devices/system/node/node0/meminfo", f"Node 0 MemTotal: 8 kB\nNode 0 MemFree: {HUGE} kB\n"),
        ("devices/system/node/node0/cpulist", f"0-{HUGE}\n"),
        ("devices/system/cpu/online", f"0,{HUGE}\n"),
        ("devices/system/cpu/cpu0/topology/thread_siblings_list", HUGE),
    ],
)
def test_huge_numbers_name_the_file(vm_copy, relative, content):
    (vm_copy / relative).write_text(content)
    with pytest.raises(HostError) as info:
        read_topology(str(vm_copy))
    _assert_one_line_host_error(info, vm_copy / relative)


def test_huge_meminfo_in_proc_names_the_file(tmp_path):
    """A host without NUMA directories: memory comes from ROOT/proc/meminfo."""
    shutil.copytree(SYSFS / "vm-2core", tmp_path / "sys")
    shutil.rmtree(tmp_path / "sys/devices/system/node")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(f"MemTotal: {HUGE} kB\nMemFree: 1 kB\n")
    with pytest.raises(HostError, match="MemTotal has 5000 digits") as info:
        read_topology(str(tmp_path))
    _assert_one_line_host_error(info, tmp_path / "proc/meminfo")


def test_twenty_digit_counters_are_still_read(vm_copy):
    pool = vm_copy / "devices/system/node/node0/hugepages/hugepages-2048kB"
    (pool / "nr_hugepages").write_text("18446744073709551615\n")  # 2**64 - 1
    assert read_topology(str(vm_copy)).nodes[0].hugepages_total[M2] == 2**64 - 1


def test_live_host():
    topo = read_topology("/")
    online = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    assert online <= set(topo.cpus)
    assert len(topo.cpus) == os.cpu_count()
    assert set(topo.cpus) == {cpu for node in topo.nodes.values() for cpu in node.cpus}
    assert topo.mem_total > 0
    assert all(cpu.id in cpu.siblings for cpu in topo.cpus.values())
    assert topo.sockets and len(topo.cores()) >= 1


def test_dict_and_description():
    topo = read_topology(str(SYSFS / "smt-2s4n"))
    data = json.loads(json.dumps(topology_to_dict(topo)))
    assert data["threads_per_core"] == 2 and len(data["nodes"]) == 4 and len(data["cpus"]) == 64
    assert data["nodes"][0]["cpus"] == "0-7,32-39"
    text = topo.describe()
    assert text.splitlines()[0] == "2 sockets, 4 NUMA nodes, 32 cores, 64 CPUs (2 threads per core), 191.2G"
    assert "node 2: CPUs 16-23,48-55 on socket 1" in text


@pytest.mark.parametrize(
    "size, text", [(64 * G1, "64G"), (M2, "2M"), (3 * G1 // 2, "1.5G"), (1536, "1.5K"), (100, "100B")]
)
def test_human_size(size, text):
    assert human_size(size) == text


def test_live_host_without_numa_falls_back_to_psutil():
    import psutil

    from slurm_vc.topology import _fallback_memory

    total, free = _fallback_memory("/", "/sys")
    assert total == psutil.virtual_memory().total
    assert 0 < free <= total
