"""Placement plan: pure decisions on the recorded hosts, invariants, and every error case."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from functools import cache
from pathlib import Path

import pytest

from slurm_vc.config import config_from_mapping
from slurm_vc.errors import HostError, PlacementError, RequestError
from slurm_vc.plan import explain, pin_runs, place, plan_to_dict, summarize
from slurm_vc.request import VClusterRequest, parse_request
from slurm_vc.topology import HostTopology, read_topology

SYSFS = Path(__file__).resolve().parent.parent / "fixtures" / "sysfs"
MIB = 1024 * 1024
GIB = 1024 * MIB
M2 = 2 * MIB


@cache
def topo(name: str) -> HostTopology:
    return read_topology(str(SYSFS / name))


def site(images: dict | None = None, **host):
    """A site config with image 'hpc' (plus ``images``) and the given [host] settings."""
    catalog = {"hpc": {"kernel": "/boot/vmlinuz"}}
    catalog.update(images or {})
    return config_from_mapping({"host": host, "images": catalog})


def req(text: str = "hpc", config=None) -> VClusterRequest:
    return parse_request(text, config or site())


def core_keys(topology: HostTopology, cpus) -> list[tuple[int, int]]:
    return [topology.core_key(cpu) for cpu in cpus]


# --- the paper's case -------------------------------------------------------------------------


def test_cray_whole_node_reproduces_the_paper():
    config = site(hugepage_size="2M")
    plan = place(req(config=config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.vcpus == 24
    assert plan.vcpu_pins == {i: i for i in range(24)}
    assert [(c.id, c.host_node, c.vcpus) for c in plan.cells] == [
        (0, 0, tuple(range(12))),
        (1, 1, tuple(range(12, 24))),
    ]
    assert plan.cells[0].memory == plan.cells[1].memory == 63 * GIB // 2
    assert plan.memory == 63 * GIB  # 64G less the default 1G host reserve
    assert plan.page_size == M2
    assert plan.hugepages == {0: 63 * GIB // 2 // M2, 1: 63 * GIB // 2 // M2}
    assert (plan.sockets, plan.cores_per_socket, plan.threads_per_core) == (2, 12, 1)
    assert plan.emulator_cpus == tuple(range(24))  # nothing free, nothing reserved
    assert plan.host_nodes == (0, 1)


def test_cray_explicit_memory():
    config = site()
    plan = place(req("hpc,mem=60G", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert [c.memory for c in plan.cells] == [30 * GIB, 30 * GIB]
    assert plan.hugepages == {0: 15360, 1: 15360}


def test_allocation_order_and_duplicates_do_not_matter_and_inputs_are_untouched():
    config = site()
    cpus = [23, 5, 0, 5, 12, 1]
    before = list(cpus)
    one = place(req(config=config), config, topo("cray-xc30"), cpus, 16 * GIB)
    two = place(req(config=config), config, topo("cray-xc30"), sorted(set(cpus)), 16 * GIB)
    assert one == two
    assert cpus == before
    assert one.vcpu_pins == {0: 0, 1: 1, 2: 5, 3: 12, 4: 23}


# --- SMT --------------------------------------------------------------------------------------


def test_smt_whole_node_never_pins_two_vcpus_on_siblings():
    config = site()
    host = topo("smt-2s4n")
    plan = place(req(config=config), config, host, range(64), 180 * GIB)
    assert plan.vcpus == 32
    assert sorted(plan.vcpu_pins.values()) == list(range(32))
    assert len(set(core_keys(host, plan.vcpu_pins.values()))) == 32
    assert [c.host_node for c in plan.cells] == [0, 1, 2, 3]
    assert [len(c.vcpus) for c in plan.cells] == [8, 8, 8, 8]
    assert (plan.sockets, plan.cores_per_socket) == (4, 8)
    # the idle sibling threads take the emulator threads
    assert plan.emulator_cpus == tuple(range(32, 64))
    assert any("SMT siblings 32-63" in note for note in plan.notes)


def test_smt_siblings_only_allocation_still_one_vcpu_per_core():
    config = site()
    plan = place(req(config=config), config, topo("smt-2s4n"), [0, 32, 1, 33], 8 * GIB)
    assert plan.vcpu_pins == {0: 0, 1: 1}
    assert plan.emulator_cpus == (32, 33)


def test_smt_too_many_vcpus_counts_cores_not_threads():
    config = site()
    with pytest.raises(PlacementError) as info:
        place(req("hpc,vcpus=3", config), config, topo("smt-2s4n"), [0, 32, 1, 33], 8 * GIB)
    message = str(info.value)
    assert "vcpus=3" in message and "only 2 physical cores" in message


def test_smt_siblings_allowed_uses_every_thread():
    config = site(allow_smt_siblings=True)
    host = topo("smt-2s4n")
    plan = place(req(config=config), config, host, range(64), 180 * GIB)
    assert plan.vcpus == 64
    assert sorted(plan.vcpu_pins.values()) == list(range(64))
    # vCPUs stay grouped by node: cell 0 holds CPUs 0-7 and their siblings 32-39
    assert [plan.vcpu_pins[v] for v in plan.cells[0].vcpus] == list(range(8)) + list(range(32, 40))
    assert plan.emulator_cpus == tuple(range(64))


def test_smt_siblings_allowed_fills_distinct_cores_first():
    config = site(allow_smt_siblings=True)
    host = topo("smt-2s4n")
    plan = place(req("hpc,vcpus=6", config), config, host, [0, 1, 2, 3, 32, 33, 34, 35], 8 * GIB)
    used = list(plan.vcpu_pins.values())
    assert len(set(core_keys(host, used))) == 4  # all four cores before doubling up
    assert sorted(used) == [0, 1, 2, 3, 32, 33]
    assert plan.emulator_cpus == (34, 35)


# --- reserved cores and emulator threads ------------------------------------------------------


def test_one_reserved_core_leaves_uneven_cells_and_one_socket():
    config = site(reserved_cores=1)
    plan = place(req(config=config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.emulator_cpus == (23,)  # tie between nodes -> the higher node, highest core
    assert plan.vcpus == 23
    assert 23 not in plan.vcpu_pins.values()
    assert [len(c.vcpus) for c in plan.cells] == [12, 11]
    assert (plan.sockets, plan.cores_per_socket) == (1, 23)
    # memory in proportion to vCPUs, whole pages
    assert plan.cells[0].memory > plan.cells[1].memory
    assert all(c.memory % M2 == 0 for c in plan.cells)
    assert abs(plan.cells[0].memory / plan.cells[1].memory - 12 / 11) < 0.001


def test_two_reserved_cores_come_from_both_nodes():
    config = site(reserved_cores=2)
    plan = place(req(config=config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.emulator_cpus == (11, 23)
    assert [len(c.vcpus) for c in plan.cells] == [11, 11]
    assert (plan.sockets, plan.cores_per_socket) == (2, 11)
    assert plan.vcpu_pins == {**{i: i for i in range(11)}, **{11 + i: 12 + i for i in range(11)}}


def test_reserved_core_takes_both_threads_on_smt():
    config = site(reserved_cores=1)
    host = topo("smt-2s4n")
    plan = place(req(config=config), config, host, [4, 5, 6, 7, 36, 37, 38, 39], 8 * GIB)
    assert plan.emulator_cpus == (7, 39)
    assert plan.vcpu_pins == {0: 4, 1: 5, 2: 6}


def test_reserved_cores_come_from_the_fullest_node():
    config = site(reserved_cores=1)
    # 4 cores on node 0 (4-7) and 2 on node 1 (8-9)
    plan = place(req(config=config), config, topo("smt-2s4n"), [4, 5, 6, 7, 8, 9], 8 * GIB)
    assert plan.emulator_cpus == (7,)  # its sibling 39 is not allocated
    assert [len(c.vcpus) for c in plan.cells] == [3, 2]


def test_emulator_on_free_cores_when_fewer_vcpus():
    config = site()
    plan = place(req("hpc,vcpus=4", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert set(plan.emulator_cpus) == set(range(24)) - set(plan.vcpu_pins.values())


def test_reserved_cores_must_leave_one_core():
    config = site(reserved_cores=2)
    with pytest.raises(PlacementError, match=r"host.reserved_cores.*only 2 physical cores.*at least 3"):
        place(req(config=config), config, topo("cray-xc30"), [0, 1], 8 * GIB)


# --- partial allocations, cells, vCPU choice --------------------------------------------------


def test_partial_allocation_spanning_two_nodes():
    config = site()
    plan = place(req(config=config), config, topo("smt-2s4n"), range(4, 12), 16 * GIB)
    assert plan.vcpu_pins == {i: 4 + i for i in range(8)}
    assert [(c.host_node, c.vcpus) for c in plan.cells] == [(0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))]
    assert (plan.sockets, plan.cores_per_socket) == (2, 4)
    assert plan.cells[0].memory == plan.cells[1].memory == 15 * GIB // 2


def test_allocation_spanning_sockets_on_smt_host():
    config = site()
    host = topo("smt-2s4n")
    # two threads of each core 12-19: nodes 1 and 2, sockets 0 and 1
    cpus = list(range(12, 20)) + list(range(44, 52))
    plan = place(req(config=config), config, host, cpus, 16 * GIB)
    assert plan.vcpu_pins == {i: 12 + i for i in range(8)}
    assert [c.host_node for c in plan.cells] == [1, 2]
    assert plan.emulator_cpus == tuple(range(44, 52))


def test_uneven_cells_memory_in_proportion():
    config = site()
    # Cray: CPUs 8-11 on node 0 and 12-13 on node 1 -> 4 + 2 vCPUs
    plan = place(req("hpc,mem=6G", config), config, topo("cray-xc30"), range(8, 14), 8 * GIB)
    assert [len(c.vcpus) for c in plan.cells] == [4, 2]
    assert [c.memory for c in plan.cells] == [4 * GIB, 2 * GIB]
    assert (plan.sockets, plan.cores_per_socket) == (1, 6)
    assert plan.hugepages == {0: 2048, 1: 1024}


def test_fewer_vcpus_spread_over_the_allocation_nodes():
    config = site()
    plan = place(req("hpc,vcpus=5", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.vcpu_pins == {0: 0, 1: 1, 2: 2, 3: 12, 4: 13}
    assert [len(c.vcpus) for c in plan.cells] == [3, 2]


def test_one_vcpu_uses_one_cell():
    config = site()
    plan = place(req("hpc,vcpus=1,mem=1G", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.vcpu_pins == {0: 0}
    assert len(plan.cells) == 1 and plan.hugepages == {0: 512}
    assert (plan.sockets, plan.cores_per_socket) == (1, 1)


def test_image_defaults_for_vcpus_and_memory():
    config = site({"small": {"kernel": "/k", "default_vcpus": 4, "default_memory": "4G"}})
    plan = place(req("small", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.vcpus == 4 and plan.memory == 4 * GIB
    plan = place(req("small,vcpus=8,mem=2G", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.vcpus == 8 and plan.memory == 2 * GIB


def test_image_default_vcpus_larger_than_allocation():
    config = site({"wide": {"kernel": "/k", "default_vcpus": 16}})
    with pytest.raises(PlacementError, match=r"defaults to 16 vCPUs but only 2 physical cores"):
        place(req("wide", config), config, topo("vm-2core"), [0, 1], 8 * GIB)


def test_vm_2core():
    config = site()
    plan = place(req(config=config), config, topo("vm-2core"), [0, 1], 4 * GIB)
    assert plan.vcpu_pins == {0: 0, 1: 1}
    assert len(plan.cells) == 1 and plan.cells[0].memory == 3 * GIB
    assert plan.hugepages == {0: 1536}
    assert (plan.sockets, plan.cores_per_socket) == (1, 2)


def test_big_256_whole_node():
    config = site(hugepage_size="1G")
    host = topo("big-256")
    plan = place(req(config=config), config, host, range(256), 500 * GIB)
    assert plan.vcpus == 128 and len(plan.cells) == 8
    assert (plan.sockets, plan.cores_per_socket) == (8, 16)
    assert plan.vcpu_pins == {i: i for i in range(128)}
    assert len(set(core_keys(host, plan.vcpu_pins.values()))) == 128
    assert plan.page_size == GIB
    assert all(c.memory % GIB == 0 for c in plan.cells)
    assert plan.hugepages == dict.fromkeys(range(8), 62)  # 499G / 8 = 62.4G -> 62 pages each


# --- pages and memory rounding ----------------------------------------------------------------


def test_request_page_size_overrides_the_site():
    config = site(hugepage_size="2M")
    plan = place(req("hpc,pages=1G,mem=5G", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.page_size == GIB
    assert [c.memory for c in plan.cells] == [2 * GIB, 2 * GIB]  # 2.5G per cell, rounded down
    assert plan.memory == 4 * GIB
    assert plan.hugepages == {0: 2, 1: 2}
    assert any("1G dropped" in note for note in plan.notes)


def test_no_hugepages_uses_2m_granules_and_no_pools():
    config = site(hugepage_size="none")
    plan = place(req("hpc,mem=3001M", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert plan.page_size == 0 and plan.hugepages == {}
    assert [c.memory for c in plan.cells] == [1500 * MIB, 1500 * MIB]
    plan = place(req("hpc,pages=none", site()), site(), topo("vm-2core"), [0, 1], 4 * GIB)
    assert plan.page_size == 0 and plan.hugepages == {}


# --- errors -----------------------------------------------------------------------------------


def test_more_vcpus_than_cores_names_both_numbers():
    config = site()
    with pytest.raises(PlacementError) as info:
        place(req("hpc,vcpus=30", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert "vcpus=30" in str(info.value) and "only 24 physical cores" in str(info.value)
    assert info.value.exit_code == 4 and info.value.user_fault


def test_memory_more_than_the_allocation():
    config = site()
    with pytest.raises(
        PlacementError, match=r"mem=100G was requested but the job has only 64G.*at most mem=63G"
    ):
        place(req("hpc,mem=100G", config), config, topo("cray-xc30"), range(24), 64 * GIB)


def test_no_memory_left_for_the_host():
    config = site()
    with pytest.raises(PlacementError, match=r"no memory left for the host.*at most mem=63G"):
        place(req("hpc,mem=64G", config), config, topo("cray-xc30"), range(24), 64 * GIB)


def test_image_default_memory_must_fit():
    config = site({"fat": {"kernel": "/k", "default_memory": "8G"}})
    with pytest.raises(PlacementError, match=r"image 'fat' defaults to 8G"):
        place(req("fat", config), config, topo("vm-2core"), [0, 1], 4 * GIB)


def test_no_memory_left_for_the_guest():
    config = site(reserved_memory="2G")
    with pytest.raises(PlacementError, match=r"no memory left for the guest.*more than 2G"):
        place(req(config=config), config, topo("vm-2core"), [0, 1], 2 * GIB)


def test_no_memory_allocated():
    config = site()
    with pytest.raises(PlacementError, match="no memory allocated"):
        place(req(config=config), config, topo("vm-2core"), [0, 1], 0)


def test_memory_below_one_page_per_cell():
    config = site()
    with pytest.raises(PlacementError) as info:
        place(req("hpc,mem=1G,pages=1G", config), config, topo("cray-xc30"), range(24), 64 * GIB)
    message = str(info.value)
    assert "less than one 1G page" in message and "at least mem=2G" in message


def test_memory_below_one_page_suggestion_fits_the_job():
    """The plan does not suggest a size the job cannot have: 2 cells of 1G pages need 2G, the job has 2G."""
    config = site()
    with pytest.raises(PlacementError) as info:
        place(req("hpc,pages=1G", config), config, topo("cray-xc30"), range(24), 2 * GIB)
    message = str(info.value)
    assert "mem=" not in message.split("page;")[1]
    assert "needs at least 2G for the guest" in message and "pages=2M or pages=none" in message


def test_suggested_sizes_are_valid_requests():
    """Every mem=SIZE a placement error suggests parses as a request again (whole MiB, no decimals)."""
    config = site()
    with pytest.raises(PlacementError) as info:
        place(req("hpc,mem=2049M", config), config, topo("cray-xc30"), range(24), 2 * GIB + 512 * 1024)
    message = str(info.value)
    assert "mem=2049M was requested" in message
    suggested = re.search(r"at most (mem=\S+)", message).group(1)
    assert suggested == "mem=1024M" or suggested == "mem=1G"
    req(f"hpc,{suggested}", config)  # parses


def test_memory_below_one_page_uneven_cells():
    config = site()
    # 11 vCPUs on node 0, 1 on node 1: the small cell needs 12 x 2M in total
    cpus = list(range(0, 11)) + [12]
    with pytest.raises(PlacementError, match=r"cell 1 \(host node 1\).*at least mem=24M"):
        place(req("hpc,mem=20M", config), config, topo("cray-xc30"), cpus, 8 * GIB)
    plan = place(req("hpc,mem=24M", config), config, topo("cray-xc30"), cpus, 8 * GIB)
    assert [c.memory for c in plan.cells] == [22 * MIB, 2 * MIB]


def test_empty_allocation():
    config = site()
    with pytest.raises(PlacementError, match="no CPUs allocated"):
        place(req(config=config), config, topo("vm-2core"), [], 4 * GIB)


def test_cpus_not_on_the_host_are_a_host_fault():
    config = site()
    with pytest.raises(HostError, match=r"CPUs 2-3 are not online on this host \(online CPUs: 0-1\)"):
        place(req(config=config), config, topo("vm-2core"), [0, 1, 2, 3], 4 * GIB)


def test_unknown_image():
    config = site()
    with pytest.raises(RequestError, match="unknown image 'other'; available images: hpc"):
        place(VClusterRequest(image="other"), config, topo("vm-2core"), [0, 1], 4 * GIB)


def _without_1g_pools(host: HostTopology) -> HostTopology:
    nodes = {
        n: dataclasses.replace(node, hugepages_total={M2: 4}, hugepages_free={M2: 4})
        for n, node in host.nodes.items()
    }
    return dataclasses.replace(host, nodes=nodes)


def test_page_size_the_host_does_not_offer():
    host = _without_1g_pools(topo("vm-2core"))
    config = site()
    with pytest.raises(PlacementError, match=r"pages=1G was requested but host node 0 offers only 2M"):
        place(req("hpc,pages=1G", config), config, host, [0, 1], 4 * GIB)
    config = site(hugepage_size="1G")
    with pytest.raises(HostError, match=r"host.hugepage_size = 1G but host node 0 offers only 2M"):
        place(req(config=config), config, host, [0, 1], 4 * GIB)


def test_host_without_hugepage_pools():
    """A kernel without hugetlb pools (no hugepages/ directory) cannot back a hugepage guest."""
    host = topo("vm-2core")
    host = dataclasses.replace(
        host,
        nodes={
            n: dataclasses.replace(node, hugepages_total={}, hugepages_free={})
            for n, node in host.nodes.items()
        },
    )
    config = site()
    with pytest.raises(
        PlacementError, match=r"pages=1G was requested but host node 0 offers no hugepages; use pages=none"
    ):
        place(req("hpc,pages=1G", config), config, host, [0, 1], 4 * GIB)
    with pytest.raises(HostError, match=r"host.hugepage_size = 2M but host node 0 offers no hugepages"):
        place(req(config=config), config, host, [0, 1], 4 * GIB)
    assert place(req("hpc,pages=none", config), config, host, [0, 1], 4 * GIB).page_size == 0


# --- invariants over many random allocations --------------------------------------------------


@pytest.mark.parametrize("fixture, allow_smt, reserved", [("smt-2s4n", False, 0), ("smt-2s4n", True, 1)])
def test_invariants_on_random_allocations(fixture, allow_smt, reserved):
    host = topo(fixture)
    config = site(allow_smt_siblings=allow_smt, reserved_cores=reserved)
    rng = random.Random(6)
    checked = 0
    for _ in range(300):
        cpus = rng.sample(sorted(host.cpus), rng.randint(1, len(host.cpus)))
        memory = rng.randint(1, 64) * GIB
        try:
            plan = place(req(config=config), config, host, cpus, memory)
        except PlacementError:
            continue
        checked += 1
        used = list(plan.vcpu_pins.values())
        assert set(used) <= set(cpus)
        assert len(set(used)) == plan.vcpus == len(plan.vcpu_pins)
        if not allow_smt:
            assert len(set(core_keys(host, used))) == plan.vcpus
        assert set(plan.emulator_cpus) <= set(cpus)
        if reserved:
            assert not set(plan.emulator_cpus) & set(used)
        # cells: consecutive vCPU numbers, one host node each, ascending pins inside a cell
        assert [v for c in plan.cells for v in c.vcpus] == list(range(plan.vcpus))
        for cell in plan.cells:
            pins = [plan.vcpu_pins[v] for v in cell.vcpus]
            assert {host.node_of(p) for p in pins} == {cell.host_node}
            assert pins == sorted(pins)
            assert cell.memory > 0 and cell.memory % plan.page_size == 0
            assert plan.hugepages[cell.host_node] * plan.page_size == cell.memory
        assert len({c.host_node for c in plan.cells}) == len(plan.cells)
        assert plan.memory == sum(c.memory for c in plan.cells) <= memory - config.host.reserved_memory
        assert plan.sockets * plan.cores_per_socket * plan.threads_per_core == plan.vcpus
    assert checked > 100


# --- presentation -----------------------------------------------------------------------------


def test_explain_cray():
    config = site(reserved_cores=2)
    host = topo("cray-xc30")
    plan = place(req(config=config), config, host, range(24), 64 * GIB)
    text = explain(plan, host)
    assert "Guest: 22 vCPUs, 63G of memory on 2M hugepages, 2 NUMA cells" in text
    assert "vCPU 0-10      -> CPU 0-10      (socket 0, node 0)" in text
    assert "vCPU 11-21     -> CPU 12-22     (socket 1, node 1)" in text
    assert "Emulator threads -> CPU 11,23" in text
    assert (
        "cell 1 <- host node 1: vCPUs 11-21, memory 31.5G = 16128 x 2M pages (node 1 has 384 free now)"
        in text
    )
    assert "host node 0: 16128 pages (31.5G)" in text
    assert "Why:" in text and "host.reserved_cores" in text


def test_explain_without_hugepages_and_with_warning():
    config = site(hugepage_size="none")
    host = topo("cray-xc30")
    plan = place(req("hpc,vcpus=1", config), config, host, range(24), 64 * GIB)
    text = explain(plan, host)
    assert "Hugepages: none" in text
    assert "warning: cell 0 needs 63G but host node 0 has only 31.8G" in text


def test_summary_and_dict():
    config = site()
    plan = place(req(config=config), config, topo("cray-xc30"), range(24), 64 * GIB)
    assert summarize(plan).splitlines() == [
        "vcpus 24  memory 63G  pages 2M  sockets 2 cores 12 threads 1",
        "vcpupin 0-23:0-23",
        "emulatorpin 0-23",
        "cell 0 node 0  vcpus 0-11  memory 31.5G  16128 pages",
        "cell 1 node 1  vcpus 12-23  memory 31.5G  16128 pages",
    ]
    data = json.loads(json.dumps(plan_to_dict(plan)))
    assert data["vcpu_pins"]["23"] == 23
    assert data["cells"][1] == {
        "id": 1,
        "host_node": 1,
        "vcpus": list(range(12, 24)),
        "memory": 63 * GIB // 2,
    }
    assert data["hugepages"] == {"0": 16128, "1": 16128}


def test_pin_runs():
    assert pin_runs({0: 4, 1: 5, 2: 9, 3: 10}) == [([0, 1], [4, 5]), ([2, 3], [9, 10])]
    assert pin_runs({0: 0, 1: 1, 2: 2}, group=lambda cpu: cpu // 2) == [([0, 1], [0, 1]), ([2], [2])]
