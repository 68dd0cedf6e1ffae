"""Placement: the pure decision of how a guest sits on this node's allocation.

From the job's allocated CPU IDs and memory on this node, the site config and the host topology,
``place`` computes vCPU->pCPU pins (one vCPU per distinct physical core), emulator pins, guest NUMA
cells mirroring the host NUMA nodes the allocation touches, memory per cell rounded to whole pages,
and hugepages needed per host NUMA node.  No I/O happens here.

The rules, in the order ``place`` applies them:

1. The allocation is grouped into physical cores (socket, core).  One vCPU per core, pinned to the
   core's lowest allocated CPU; its SMT siblings stay idle unless ``host.allow_smt_siblings`` (then
   every allocated CPU can carry a vCPU, distinct cores filled first).
2. ``host.reserved_cores`` whole cores are taken out of the allocation for QEMU's emulator threads,
   one at a time from the host node with the most cores left (ties: the higher node), highest core
   first, so the remaining cells stay as balanced as possible.
3. vCPUs: ``vcpus=`` of the request, else the image's ``default_vcpus``, else every available core.
   When fewer than the available cores are wanted, they are spread over the allocation's NUMA nodes
   in proportion to each node's cores (largest remainder), lowest-numbered cores first within a
   node: the cells then mirror the nodes the allocation touches and each cell's memory share stays
   close to what the job holds on that node.
4. Emulator threads: the reserved cores; without reserved cores, the allocated CPUs on cores that
   carry no vCPU, else the idle SMT siblings of vCPU cores, else the whole allocation.
5. Guest NUMA cell i mirrors the i-th host node the chosen CPUs touch (ordered by lowest CPU).
   vCPUs are numbered cell by cell, ascending host CPU within a cell: on a Linux-numbered host
   without SMT siblings in use, vCPU->pCPU is ascending overall (Cray whole node: vCPU i -> CPU i).
6. Memory: ``mem=`` of the request, else the image's ``default_memory``, else the job's memory on the
   node less ``host.reserved_memory``; guest plus reserve must fit the job's memory.  It is split
   across cells in proportion to their vCPUs, each rounded down to whole pages (2 MiB granules when
   no hugepages are used); a cell below one page is an error.
7. Hugepages per host node = that node's cell memory / page size.
8. Guest CPU topology: one socket per cell when the cells have equal vCPUs, else one socket.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .errors import HostError, PlacementError, RequestError
from .topology import HostTopology, human_size
from .units import MIB, format_cpulist, format_size

if TYPE_CHECKING:  # imported for annotations only: keeps ``import slurm_vc.plan`` free of pydantic
    from .config import SiteConfig
    from .request import VClusterRequest

NORMAL_PAGE_GRANULE = 2 * MIB  # memory granularity when the guest uses normal pages


@dataclass(frozen=True)
class GuestCell:
    """One guest NUMA cell, backed by one host NUMA node."""

    id: int
    host_node: int
    vcpus: tuple[int, ...]  # guest vCPU numbers in this cell
    memory: int  # bytes, a whole number of pages


@dataclass(frozen=True)
class Plan:
    """Everything the domain XML and the hugepage manager need, and nothing host-specific beyond it."""

    vcpus: int
    memory: int  # bytes, sum of the cells
    page_size: int  # bytes; 0 = normal pages
    vcpu_pins: dict[int, int]  # vCPU -> host CPU id
    emulator_cpus: tuple[int, ...]  # host CPUs for QEMU's emulator threads
    cells: tuple[GuestCell, ...]
    hugepages: dict[int, int]  # host NUMA node -> pages of page_size needed
    sockets: int  # guest CPU topology
    cores_per_socket: int
    threads_per_core: int = 1
    notes: tuple[str, ...] = ()  # why: one sentence per decision, for ``explain``

    @property
    def host_nodes(self) -> tuple[int, ...]:
        """The host NUMA nodes the guest uses, in cell order (the numatune nodeset)."""
        return tuple(cell.host_node for cell in self.cells)

    @property
    def host_cpus(self) -> tuple[int, ...]:
        """The host CPUs carrying vCPUs, ascending."""
        return tuple(sorted(self.vcpu_pins.values()))


# ---------------------------------------------------------------------------------------------
# The decision


def _check_allocation(topology: HostTopology, allocated_cpus: Sequence[int]) -> list[int]:
    allocation = sorted(set(allocated_cpus))
    if not allocation:
        raise PlacementError("the job has no CPUs allocated on this node")
    missing = [cpu for cpu in allocation if cpu not in topology.cpus]
    if missing:
        # Slurm handed out CPUs this host does not have online: the node's Slurm config is wrong.
        raise HostError(
            f"allocated CPU{'s' if len(missing) > 1 else ''} {format_cpulist(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} not online on this host "
            f"(online CPUs: {format_cpulist(topology.cpus)})"
        )
    return allocation


def _allocated_cores(topology: HostTopology, allocation: list[int]) -> list[tuple[int, ...]]:
    """The allocation grouped by physical core; each core's CPUs ascending, cores by lowest CPU."""
    cores: dict[tuple[int, int], list[int]] = {}
    for cpu in allocation:
        cores.setdefault(topology.core_key(cpu), []).append(cpu)
    return sorted((tuple(cpus) for cpus in cores.values()), key=lambda cpus: cpus[0])


def _reserve_cores(
    topology: HostTopology, cores: list[tuple[int, ...]], count: int
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Split cores into (reserved, usable): reserved taken one by one from the fullest node, highest first."""
    usable = list(cores)
    reserved: list[tuple[int, ...]] = []
    for _ in range(count):
        per_node: dict[int, list[tuple[int, ...]]] = {}
        for core in usable:
            per_node.setdefault(topology.node_of(core[0]), []).append(core)
        node = max(per_node, key=lambda n: (len(per_node[n]), n))
        core = per_node[node][-1]
        usable.remove(core)
        reserved.append(core)
    return sorted(reserved, key=lambda cpus: cpus[0]), usable


def _vcpu_slots(cores: list[tuple[int, ...]], allow_smt: bool) -> list[int]:
    """Host CPUs that may carry a vCPU, in the order they are handed out."""
    if not allow_smt:
        return [core[0] for core in cores]
    # Every thread may carry a vCPU, but distinct cores come first: thread 0 of every core, then thread 1 ...
    depth = max(len(core) for core in cores)
    return [core[thread] for thread in range(depth) for core in cores if thread < len(core)]


def _apportion(topology: HostTopology, slots: list[int], vcpus: int) -> dict[int, list[int]]:
    """Spread ``vcpus`` over the host nodes of ``slots`` in proportion to each node's slots.

    Largest remainder, ties to the node touched first; within a node the first slots in ``slots``
    order are taken.  Keeping every node of the allocation in use keeps each cell's memory share
    close to what the job holds on that node.
    """
    by_node: dict[int, list[int]] = {}
    for cpu in slots:
        by_node.setdefault(topology.node_of(cpu), []).append(cpu)
    order = sorted(by_node, key=lambda node: min(by_node[node]))
    total = len(slots)
    counts = {node: vcpus * len(by_node[node]) // total for node in order}
    left = vcpus - sum(counts.values())
    by_remainder = sorted(order, key=lambda node: (-(vcpus * len(by_node[node]) % total), order.index(node)))
    for node in by_remainder[:left]:
        counts[node] += 1
    return {node: by_node[node][: counts[node]] for node in order}


def _choose_vcpus(request: VClusterRequest, image_default: int | None, slots: list[int], why: str) -> int:
    if request.vcpus is not None:
        wanted, origin = request.vcpus, f"vcpus={request.vcpus} was requested"
    elif image_default is not None:
        wanted, origin = image_default, f"image {request.image!r} defaults to {image_default} vCPUs"
    else:
        return len(slots)
    if wanted > len(slots):
        raise PlacementError(
            f"{origin} but only {len(slots)} {why} available in the allocation on this node; "
            f"ask for vcpus={len(slots)} or fewer, or for more cores"
        )
    return wanted


def _at_most(allocated: int, reserve: int) -> str:
    """The largest ``mem=`` that fits, as the request grammar writes it (whole MiB), or nothing."""
    room = max(allocated - reserve, 0) // MIB * MIB
    return f"ask for at most mem={format_size(room)} " if room else ""


def _guest_memory(
    request: VClusterRequest, image_default: int | None, allocated: int, reserve: int
) -> tuple[int, str]:
    """(guest memory, why).  Guest memory plus the host reserve must fit the job's memory."""
    if allocated <= 0:
        raise PlacementError("the job has no memory allocated on this node; ask Slurm for memory (--mem)")
    if request.memory is not None:
        memory, origin = request.memory, f"mem={format_size(request.memory)} was requested"
    elif image_default is not None:
        memory, origin = image_default, f"image {request.image!r} defaults to {human_size(image_default)}"
    else:
        if allocated <= reserve:
            raise PlacementError(
                f"no memory left for the guest: the job has {human_size(allocated)} on this node and the "
                f"site keeps {human_size(reserve)} of it for the host (host.reserved_memory); "
                f"ask Slurm for more than {human_size(reserve)} per node"
            )
        return allocated - reserve, (
            f"memory {human_size(allocated - reserve)} = the job's {human_size(allocated)} on this node"
            f" less {human_size(reserve)} kept for the host (host.reserved_memory)"
        )
    if memory > allocated:
        raise PlacementError(
            f"{origin} but the job has only {human_size(allocated)} on this node; "
            f"{_at_most(allocated, reserve)}(the site keeps {human_size(reserve)} for the host) or ask Slurm"
            " for more memory"
        )
    if memory + reserve > allocated:
        raise PlacementError(
            f"no memory left for the host: {origin}, plus {human_size(reserve)} the site keeps for the host "
            f"(host.reserved_memory), is more than the job's {human_size(allocated)} on this node; "
            f"{_at_most(allocated, reserve)}or ask Slurm for more memory"
        )
    return memory, f"memory {human_size(memory)}: {origin}"


def _check_page_size(
    request: VClusterRequest, topology: HostTopology, page_size: int, nodes: list[int]
) -> None:
    """Fail early when the host kernel has no pool of this page size on a node the guest needs."""
    if page_size == 0:
        return
    for node in nodes:
        pools = topology.nodes[node].hugepages_total if node in topology.nodes else {}
        if page_size not in pools:
            offered = f"only {', '.join(human_size(size) for size in pools)}" if pools else "no"
            if request.page_size is not None:
                choices = "".join(f"pages={human_size(size)} or " for size in pools)
                raise PlacementError(
                    f"pages={human_size(page_size)} was requested but host node {node} offers {offered}"
                    f" hugepages; use {choices}pages=none"
                )
            raise HostError(
                f"the site's host.hugepage_size = {human_size(page_size)} but host node {node} offers"
                f" {offered} hugepages (kernel pools under devices/system/node/node{node}/hugepages)"
            )


def place(
    request: VClusterRequest,
    config: SiteConfig,
    topology: HostTopology,
    allocated_cpus: Sequence[int],
    allocated_memory: int,
) -> Plan:
    """Decide how the guest sits on this node's allocation (pure; see the module docstring for the rules).

    Raises PlacementError when the request cannot fit the allocation (more vCPUs than cores,
    memory below one page per cell, no memory left for the host), HostError when Slurm's allocation
    or the site's page size does not match the host, RequestError for an image not in the catalog.
    """
    image = config.images.get(request.image)
    if image is None:
        available = ", ".join(sorted(config.images)) or "(none configured)"
        raise RequestError(f"unknown image {request.image!r}; available images: {available}")
    notes: list[str] = []
    allocation = _check_allocation(topology, allocated_cpus)
    cores = _allocated_cores(topology, allocation)
    touched = sorted({topology.node_of(cpu) for cpu in allocation})
    notes.append(
        f"the allocation is CPUs {format_cpulist(allocation)}: {len(cores)} physical "
        f"core{'s' if len(cores) != 1 else ''} on host node{'s' if len(touched) != 1 else ''} "
        f"{format_cpulist(touched)}"
    )

    # Reserved cores for the emulator threads.
    reserve = config.host.reserved_cores
    if reserve >= len(cores):
        raise PlacementError(
            f"the site keeps {reserve} core{'s' if reserve != 1 else ''} of every allocation for emulator "
            f"threads (host.reserved_cores) but the job has only {len(cores)} physical "
            f"core{'s' if len(cores) != 1 else ''} on this node; ask for at least {reserve + 1} cores"
        )
    reserved, usable = _reserve_cores(topology, cores, reserve)
    if reserved:
        notes.append(
            f"{reserve} core{'s' if reserve != 1 else ''} (CPUs "
            f"{format_cpulist(c for core in reserved for c in core)}) kept for QEMU's emulator threads "
            "(host.reserved_cores), taken from the fullest host node so the cells stay balanced"
        )

    # vCPUs.
    allow_smt = config.host.allow_smt_siblings
    slots = _vcpu_slots(usable, allow_smt)
    what = "CPUs (SMT siblings allowed) are" if allow_smt else "physical cores are"
    vcpus = _choose_vcpus(request, image.default_vcpus, slots, what)
    per_node = _apportion(topology, slots, vcpus)
    chosen = sorted(cpu for cpus in per_node.values() for cpu in cpus)
    if vcpus == len(slots):
        notes.append(
            f"{vcpus} vCPU{'s' if vcpus != 1 else ''}: one per available {'CPU' if allow_smt else 'core'}"
        )
    else:
        shares = ", ".join(f"{len(cpus)} on node {node}" for node, cpus in per_node.items() if cpus)
        notes.append(
            f"{vcpus} of {len(slots)} available {'CPUs' if allow_smt else 'cores'} carry vCPUs, spread over "
            f"the allocation's NUMA nodes in proportion to their cores ({shares}), "
            + ("distinct cores first, then " if allow_smt else "")
            + "lowest-numbered first"
        )
    chosen_set = set(chosen)
    idle_siblings = [
        c for core in usable if any(x in chosen_set for x in core) for c in core if c not in chosen_set
    ]
    shared = [core for core in usable if sum(c in chosen_set for c in core) > 1]
    if not allow_smt and idle_siblings:
        notes.append(
            f"SMT siblings {format_cpulist(idle_siblings)} of the vCPU cores carry no vCPU "
            "(host.allow_smt_siblings = false): two vCPUs never share a physical core"
        )
    if shared:
        notes.append(
            f"{len(shared)} physical core{'s' if len(shared) != 1 else ''} carry two or more vCPUs on SMT "
            "siblings (host.allow_smt_siblings = true)"
        )

    # Emulator threads.
    if reserved:
        emulator = sorted(c for core in reserved for c in core)
        notes.append(f"emulator threads pinned to the reserved CPUs {format_cpulist(emulator)}")
    else:
        free_cores = [c for core in usable if not any(x in chosen_set for x in core) for c in core]
        if free_cores:
            emulator = sorted(free_cores)
            why = "the allocated cores that carry no vCPU"
        elif idle_siblings:
            emulator = sorted(idle_siblings)
            why = "the idle SMT siblings of the vCPU cores"
        else:
            emulator = list(allocation)
            why = "the whole allocation (no core is free; set host.reserved_cores to keep them apart)"
        notes.append(f"emulator threads pinned to {why}: CPUs {format_cpulist(emulator)}")

    # Cells: one per host node the chosen CPUs touch, in order of their lowest CPU.
    by_node: dict[int, list[int]] = {}
    for cpu in chosen:
        by_node.setdefault(topology.node_of(cpu), []).append(cpu)
    pins: dict[int, int] = {}
    cell_cpus: list[tuple[int, list[int]]] = []
    for node, cpus in by_node.items():
        first = len(pins)
        for offset, cpu in enumerate(cpus):
            pins[first + offset] = cpu
        cell_cpus.append((node, list(range(first, first + len(cpus)))))
    notes.append(
        f"{len(cell_cpus)} guest NUMA cell{'s' if len(cell_cpus) != 1 else ''} mirror host "
        f"node{'s' if len(cell_cpus) != 1 else ''} {', '.join(str(n) for n, _ in cell_cpus)}; "
        "vCPUs are numbered cell by cell in ascending host CPU order"
    )

    # Memory and pages.
    memory, why_memory = _guest_memory(
        request, image.default_memory, allocated_memory, config.host.reserved_memory
    )
    notes.append(why_memory)
    page_size = request.page_size if request.page_size is not None else config.page_size
    _check_page_size(request, topology, page_size, [node for node, _ in cell_cpus])
    granule = page_size or NORMAL_PAGE_GRANULE
    page_name = (
        f"{human_size(page_size)} hugepages"
        if page_size
        else f"normal pages ({human_size(granule)} granules)"
    )
    fewest = min(len(v) for _, v in cell_cpus)
    cells: list[GuestCell] = []
    for index, (node, cell_vcpus) in enumerate(cell_cpus):
        share = memory * len(cell_vcpus) // vcpus
        cell_memory = share // granule * granule
        if cell_memory < granule:
            needed = -(-granule * vcpus // fewest)  # ceil: the smallest memory giving every cell one page
            needed = -(-needed // granule) * granule
            if needed + config.host.reserved_memory <= allocated_memory:
                hint = f"ask for at least mem={format_size(needed)} or a smaller page size"
            else:
                kept = human_size(config.host.reserved_memory)
                hint = (
                    f"that needs at least {format_size(needed)} for the guest, more than the job's"
                    f" {human_size(allocated_memory)} on this node less the {kept} kept for the host:"
                    " use a smaller page size (pages=2M or pages=none), fewer vCPUs,"
                    " or ask Slurm for more memory"
                )
            raise PlacementError(
                f"guest memory {human_size(memory)} split over {len(cell_cpus)} NUMA "
                f"cell{'s' if len(cell_cpus) != 1 else ''} gives cell {index} (host node {node}) "
                f"{human_size(share)}, less than one {human_size(granule)} page; {hint}"
            )
        cells.append(GuestCell(id=index, host_node=node, vcpus=tuple(cell_vcpus), memory=cell_memory))
    total = sum(cell.memory for cell in cells)
    notes.append(
        f"memory is split over the cells in proportion to their vCPUs and rounded down to whole {page_name}"
        + (f" ({human_size(memory - total)} dropped)" if total != memory else "")
    )
    for cell in cells:
        node = topology.nodes.get(cell.host_node)
        if node is not None and node.mem_total and cell.memory > node.mem_total:
            notes.append(
                f"warning: cell {cell.id} needs {human_size(cell.memory)} but host node {cell.host_node} "
                f"has only {human_size(node.mem_total)} in total"
            )
    hugepages = {cell.host_node: cell.memory // page_size for cell in cells} if page_size else {}

    # Guest CPU topology.
    counts = {len(cell.vcpus) for cell in cells}
    if len(counts) == 1:
        sockets, cores_per_socket = len(cells), vcpus // len(cells)
        notes.append(
            f"guest CPU topology: {sockets} socket{'s' if sockets != 1 else ''} x {cores_per_socket} "
            f"core{'s' if cores_per_socket != 1 else ''}, one socket per cell"
        )
    else:
        sockets, cores_per_socket = 1, vcpus
        notes.append(
            f"guest CPU topology: 1 socket x {vcpus} cores, because the cells have unequal vCPU counts "
            f"({', '.join(str(len(c.vcpus)) for c in cells)})"
        )
    return Plan(
        vcpus=vcpus,
        memory=total,
        page_size=page_size,
        vcpu_pins=pins,
        emulator_cpus=tuple(emulator),
        cells=tuple(cells),
        hugepages=hugepages,
        sockets=sockets,
        cores_per_socket=cores_per_socket,
        threads_per_core=1,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------------------------------------
# Presenting a plan


def pin_runs(
    pins: dict[int, int], group: Optional[Callable[[int], object]] = None
) -> list[tuple[list[int], list[int]]]:
    """Group vCPU->CPU pins into runs where both sides step by one: [([0..11], [0..11]), ...].

    ``group(cpu)`` (e.g. the host node of a CPU) additionally breaks a run where its value changes.
    """
    runs: list[tuple[list[int], list[int]]] = []
    for vcpu in sorted(pins):
        cpu = pins[vcpu]
        if (
            runs
            and runs[-1][0][-1] == vcpu - 1
            and runs[-1][1][-1] == cpu - 1
            and (group is None or group(cpu) == group(runs[-1][1][-1]))
        ):
            runs[-1][0].append(vcpu)
            runs[-1][1].append(cpu)
        else:
            runs.append(([vcpu], [cpu]))
    return runs


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 's'}"


def _pages_text(plan: Plan) -> str:
    return f"{human_size(plan.page_size)} hugepages" if plan.page_size else "normal pages"


def summarize(plan: Plan) -> str:
    """A compact plan, a few lines (what ``slurm-vc plan`` prints without --explain)."""
    lines = [
        f"vcpus {plan.vcpus}  memory {human_size(plan.memory)}  pages "
        f"{human_size(plan.page_size) if plan.page_size else 'none'}  "
        f"sockets {plan.sockets} cores {plan.cores_per_socket} threads {plan.threads_per_core}",
        "vcpupin "
        + " ".join(f"{format_cpulist(v)}:{format_cpulist(c)}" for v, c in pin_runs(plan.vcpu_pins)),
        f"emulatorpin {format_cpulist(plan.emulator_cpus)}",
    ]
    for cell in plan.cells:
        pages = f"  {cell.memory // plan.page_size} pages" if plan.page_size else ""
        lines.append(
            f"cell {cell.id} node {cell.host_node}  vcpus {format_cpulist(cell.vcpus)}  "
            f"memory {human_size(cell.memory)}{pages}"
        )
    return "\n".join(lines)


def explain(plan: Plan, topology: HostTopology) -> str:
    """A human-readable, multi-line account of the plan: pins, cells, memory, hugepages and why."""
    lines = [
        f"Guest: {_count(plan.vcpus, 'vCPU')}, {human_size(plan.memory)} of memory on {_pages_text(plan)}, "
        f"{_count(len(plan.cells), 'NUMA cell')}, CPU topology {_count(plan.sockets, 'socket')} x "
        f"{_count(plan.cores_per_socket, 'core')} x {_count(plan.threads_per_core, 'thread')}",
        f"Host: {topology.summary()}",
        "",
        "vCPU pins (vCPU -> host CPU):",
    ]

    def where(cpu: int) -> object:
        known = topology.cpus.get(cpu)
        return (known.socket, known.node) if known else None

    for vcpus, cpus in pin_runs(plan.vcpu_pins, where):
        sockets = sorted({topology.cpus[c].socket for c in cpus if c in topology.cpus})
        nodes = sorted({topology.cpus[c].node for c in cpus if c in topology.cpus})
        lines.append(
            f"  vCPU {format_cpulist(vcpus):<9} -> CPU {format_cpulist(cpus):<9} "
            f"(socket {format_cpulist(sockets)}, node {format_cpulist(nodes)})"
        )
    lines.append(f"Emulator threads -> CPU {format_cpulist(plan.emulator_cpus)}")
    lines.append("")
    lines.append("NUMA cells (strict memory binding to the host node):")
    for cell in plan.cells:
        detail = ""
        if plan.page_size:
            node = topology.nodes.get(cell.host_node)
            pages = cell.memory // plan.page_size
            free = node.hugepages_free.get(plan.page_size) if node else None
            detail = f" = {pages} x {human_size(plan.page_size)} pages"
            if free is not None:
                detail += f" (node {cell.host_node} has {free} free now)"
        lines.append(
            f"  cell {cell.id} <- host node {cell.host_node}: vCPUs {format_cpulist(cell.vcpus)}, "
            f"memory {human_size(cell.memory)}{detail}"
        )
    lines.append("")
    if plan.hugepages:
        lines.append(f"Hugepages to add to the pools ({human_size(plan.page_size)} pages):")
        for node, pages in sorted(plan.hugepages.items()):
            lines.append(f"  host node {node}: {pages} pages ({human_size(pages * plan.page_size)})")
    else:
        lines.append("Hugepages: none (the guest uses normal pages)")
    if plan.notes:
        lines.append("")
        lines.append("Why:")
        lines.extend(f"  - {note}" for note in plan.notes)
    return "\n".join(lines)


def plan_to_dict(plan: Plan) -> dict:
    """Plain JSON-able form of a plan (``slurm-vc plan --json``); memory in bytes, CPU lists as ints."""
    return {
        "vcpus": plan.vcpus,
        "memory": plan.memory,
        "page_size": plan.page_size,
        "vcpu_pins": {str(vcpu): cpu for vcpu, cpu in sorted(plan.vcpu_pins.items())},
        "emulator_cpus": list(plan.emulator_cpus),
        "cells": [
            {"id": c.id, "host_node": c.host_node, "vcpus": list(c.vcpus), "memory": c.memory}
            for c in plan.cells
        ],
        "hugepages": {str(node): pages for node, pages in sorted(plan.hugepages.items())},
        "sockets": plan.sockets,
        "cores_per_socket": plan.cores_per_socket,
        "threads_per_core": plan.threads_per_core,
        "notes": list(plan.notes),
    }


__all__ = ["GuestCell", "Plan", "place", "explain", "summarize", "plan_to_dict", "pin_runs"]
