"""Host topology read from sysfs: sockets, NUMA nodes, cores, SMT siblings, memory and hugepages.

The sysfs root is injectable so tests and ``slurm-vc plan/render --topology DIR`` use recorded hosts
(see tests/fixtures/sysfs/).  Only plain data leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cpu:
    """One logical CPU."""

    id: int
    socket: int  # physical_package_id
    core: int  # core_id (unique only within a socket)
    node: int  # NUMA node
    siblings: tuple[int, ...]  # thread_siblings_list, including itself


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node: its CPUs, memory and hugepage pools."""

    id: int
    cpus: tuple[int, ...]
    mem_total: int  # bytes
    mem_free: int  # bytes
    hugepages_total: dict[int, int] = field(default_factory=dict)  # page size (bytes) -> pages
    hugepages_free: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class HostTopology:
    """The whole host as plain data."""

    cpus: dict[int, Cpu]
    nodes: dict[int, NumaNode]

    @property
    def sockets(self) -> list[int]:
        return sorted({cpu.socket for cpu in self.cpus.values()})

    def core_key(self, cpu_id: int) -> tuple[int, int]:
        """(socket, core) identifies a physical core."""
        cpu = self.cpus[cpu_id]
        return (cpu.socket, cpu.core)
