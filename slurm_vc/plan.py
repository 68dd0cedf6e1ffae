"""Placement: the pure decision of how a guest sits on this node's allocation.

From the job's allocated CPU IDs and memory on this node, the site config and the host topology,
``place`` computes vCPU->pCPU pins (one vCPU per distinct physical core), emulator pins, guest NUMA
cells mirroring the host NUMA nodes the allocation touches, memory per cell rounded to whole pages,
and hugepages needed per host NUMA node.  No I/O happens here.
"""

from __future__ import annotations

from dataclasses import dataclass


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
