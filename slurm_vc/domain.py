"""libvirt domain XML from small typed objects, one per libvirt element.

The classes below hold values and turn them into lxml elements (``to_xml()``); they decide nothing.
Every decision (which CPUs, how much memory per cell, which page size, which device paths) is made
by :func:`slurm_vc.plan.place`, the site config or the lifecycle, and arrives here as data.
:func:`build_domain` is the one place that maps a :class:`~slurm_vc.plan.Plan` plus site settings,
the catalog image and the per-guest device paths onto these classes; :func:`render_domain` and
:func:`render_domain_xml` return the result as an lxml element or as text.

Element and attribute names follow https://libvirt.org/formatdomain.html; the output validates with
``virt-xml-validate FILE domain`` (libvirt's own schema).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from lxml import etree

from .units import format_cpulist

if TYPE_CHECKING:  # imported for annotations only; keeps this module light
    from .config import ImageSpec, SiteConfig
    from .plan import Plan

KIB = 1024

# Names the guest sees on its virtio-serial ports (/dev/virtio-ports/<name>).
AGENT_CHANNEL_NAME = "org.qemu.guest_agent.0"
READY_CHANNEL_NAME = "org.slurm-vc.ready"


def _sub(parent: etree._Element, tag: str, text: Optional[str] = None, **attrs: object) -> etree._Element:
    """Append a child element; attributes whose value is None are left out."""
    child = etree.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


def _cpuset(cpus: Iterable[int]) -> str:
    text = format_cpulist(cpus)
    if not text:
        raise ValueError("a CPU/node set must not be empty")
    return text


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# --------------------------------------------------------------------------------------------- CPU


@dataclass(frozen=True)
class CpuTopology:
    """``<topology sockets= cores= threads=/>``: the guest's CPU topology."""

    sockets: int
    cores: int
    threads: int = 1

    def to_xml(self) -> etree._Element:
        return etree.Element(
            "topology", sockets=str(self.sockets), cores=str(self.cores), threads=str(self.threads)
        )


@dataclass(frozen=True)
class NumaCell:
    """``<cell id= cpus= memory= unit='KiB' [memAccess=]/>``: one guest NUMA cell."""

    id: int
    cpus: tuple[int, ...]  # guest vCPU numbers
    memory_kib: int
    mem_access: Optional[str] = None  # "shared" | "private"; None = hypervisor default

    def to_xml(self) -> etree._Element:
        attrs = {"id": str(self.id), "cpus": _cpuset(self.cpus)}
        attrs.update(memory=str(self.memory_kib), unit="KiB")
        if self.mem_access is not None:
            attrs["memAccess"] = self.mem_access
        return etree.Element("cell", attrs)


@dataclass(frozen=True)
class Cpu:
    """``<cpu>``: CPU mode (host-passthrough, host-model or custom model), topology and NUMA cells."""

    mode: str = "host-passthrough"  # "host-passthrough" | "host-model" | "custom"
    model: Optional[str] = None  # only for mode "custom"
    fallback: str = "allow"  # "allow" | "forbid": may libvirt pick a close model if this one is unknown
    topology: Optional[CpuTopology] = None
    cells: tuple[NumaCell, ...] = ()

    def to_xml(self) -> etree._Element:
        cpu = etree.Element("cpu", mode=self.mode)
        if self.mode == "custom":
            if not self.model:
                raise ValueError("CPU mode 'custom' needs a model")
            cpu.set("match", "exact")
            _sub(cpu, "model", self.model, fallback=self.fallback)
        if self.topology is not None:
            cpu.append(self.topology.to_xml())
        if self.cells:
            numa = _sub(cpu, "numa")
            for cell in self.cells:
                numa.append(cell.to_xml())
        return cpu


@dataclass(frozen=True)
class Vcpu:
    """``<vcpu placement='static'>N</vcpu>``."""

    count: int
    placement: str = "static"

    def to_xml(self) -> etree._Element:
        element = etree.Element("vcpu", placement=self.placement)
        element.text = str(self.count)
        return element


@dataclass(frozen=True)
class CpuTune:
    """``<cputune>``: one ``<vcpupin>`` per vCPU and an optional ``<emulatorpin>``."""

    vcpu_pins: dict[int, tuple[int, ...]] = field(default_factory=dict)  # vCPU -> host CPUs
    emulator_cpus: tuple[int, ...] = ()

    def is_empty(self) -> bool:
        return not self.vcpu_pins and not self.emulator_cpus

    def to_xml(self) -> etree._Element:
        tune = etree.Element("cputune")
        for vcpu in sorted(self.vcpu_pins):
            _sub(tune, "vcpupin", vcpu=vcpu, cpuset=_cpuset(self.vcpu_pins[vcpu]))
        if self.emulator_cpus:
            _sub(tune, "emulatorpin", cpuset=_cpuset(self.emulator_cpus))
        return tune


# ------------------------------------------------------------------------------------------ memory


@dataclass(frozen=True)
class MemNode:
    """``<memnode cellid= mode= nodeset=/>``: where one guest cell's memory comes from."""

    cell_id: int
    nodeset: tuple[int, ...]  # host NUMA nodes
    mode: str = "strict"

    def to_xml(self) -> etree._Element:
        nodeset = _cpuset(self.nodeset)
        return etree.Element("memnode", cellid=str(self.cell_id), mode=self.mode, nodeset=nodeset)


@dataclass(frozen=True)
class NumaTune:
    """``<numatune>``: the guest's overall host-node policy plus one ``<memnode>`` per cell."""

    nodeset: tuple[int, ...]  # host NUMA nodes
    mode: str = "strict"
    memnodes: tuple[MemNode, ...] = ()

    def to_xml(self) -> etree._Element:
        tune = etree.Element("numatune")
        _sub(tune, "memory", mode=self.mode, nodeset=_cpuset(self.nodeset))
        for memnode in self.memnodes:
            tune.append(memnode.to_xml())
        return tune


@dataclass(frozen=True)
class HugePage:
    """``<page size= unit='KiB' [nodeset=]/>``: back the given guest cells with pages of this size."""

    size_kib: int
    nodeset: tuple[int, ...] = ()  # guest NUMA cells; empty = all guest memory

    def to_xml(self) -> etree._Element:
        page = etree.Element("page", size=str(self.size_kib), unit="KiB")
        if self.nodeset:
            page.set("nodeset", _cpuset(self.nodeset))
        return page


@dataclass(frozen=True)
class MemoryBacking:
    """``<memoryBacking>``: hugepages, no KSM sharing, optionally locked (mlock'ed) memory."""

    hugepages: tuple[HugePage, ...] = ()
    nosharepages: bool = False
    locked: bool = False

    def is_empty(self) -> bool:
        return not self.hugepages and not self.nosharepages and not self.locked

    def to_xml(self) -> etree._Element:
        backing = etree.Element("memoryBacking")
        if self.hugepages:
            pages = _sub(backing, "hugepages")
            for page in self.hugepages:
                pages.append(page.to_xml())
        if self.nosharepages:
            _sub(backing, "nosharepages")
        if self.locked:
            _sub(backing, "locked")
        return backing


# ------------------------------------------------------------------------------- boot, clock, etc.


@dataclass(frozen=True)
class Os:
    """``<os>``: hvm guest booting from its disk, or directly from a kernel (+initrd, cmdline)."""

    kernel: Optional[str] = None
    initrd: Optional[str] = None
    cmdline: Optional[str] = None
    boot_dev: Optional[str] = "hd"  # ignored with direct kernel boot
    arch: Optional[str] = None  # None = the host's
    machine: Optional[str] = None  # None = the hypervisor's default machine type

    def to_xml(self) -> etree._Element:
        os_element = etree.Element("os")
        _sub(os_element, "type", "hvm", arch=self.arch, machine=self.machine)
        if self.kernel:
            _sub(os_element, "kernel", self.kernel)
            if self.initrd:
                _sub(os_element, "initrd", self.initrd)
            if self.cmdline:
                _sub(os_element, "cmdline", self.cmdline)
        elif self.boot_dev:
            _sub(os_element, "boot", dev=self.boot_dev)
        return os_element


@dataclass(frozen=True)
class Features:
    """``<features>``: ACPI (clean shutdown) and the APIC."""

    acpi: bool = True
    apic: bool = True

    def to_xml(self) -> etree._Element:
        features = etree.Element("features")
        if self.acpi:
            _sub(features, "acpi")
        if self.apic:
            _sub(features, "apic")
        return features


@dataclass(frozen=True)
class Timer:
    """``<timer name= present=/>``."""

    name: str
    present: bool = True

    def to_xml(self) -> etree._Element:
        return etree.Element("timer", name=self.name, present=_yes_no(self.present))


@dataclass(frozen=True)
class Clock:
    """``<clock offset='utc'>`` with the kvm-clock timer present."""

    offset: str = "utc"
    timers: tuple[Timer, ...] = (Timer("kvmclock", True),)

    def to_xml(self) -> etree._Element:
        clock = etree.Element("clock", offset=self.offset)
        for timer in self.timers:
            clock.append(timer.to_xml())
        return clock


# ----------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class Disk:
    """``<disk type='file'>``: a file-backed disk (the per-job overlay, or the read-only seed)."""

    source: str
    target: str  # "vda", "vdb", ...
    format: str = "qcow2"  # driver type: "qcow2" | "raw"
    bus: str = "virtio"
    cache: Optional[str] = None  # "none" = O_DIRECT, no host page cache
    io: Optional[str] = None  # "native" = Linux AIO (needs cache none)
    readonly: bool = False
    serial: Optional[str] = None
    backing_file: Optional[str] = None  # the overlay's backing image (the catalog image)
    backing_format: str = "qcow2"

    def to_xml(self) -> etree._Element:
        disk = etree.Element("disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=self.format, cache=self.cache, io=self.io)
        _sub(disk, "source", file=self.source)
        if self.backing_file:
            # Naming the backing image explicitly lets us tell libvirt not to relabel (chown) it:
            # otherwise it hands the shared catalog image to the QEMU user while any guest runs.
            # The catalog image must therefore be world-readable.
            backing = _sub(disk, "backingStore", type="file")
            _sub(backing, "format", type=self.backing_format)
            source = _sub(backing, "source", file=self.backing_file)
            _sub(source, "seclabel", model="dac", relabel="no")
            _sub(backing, "backingStore")
        _sub(disk, "target", dev=self.target, bus=self.bus)
        if self.readonly:
            _sub(disk, "readonly")
        if self.serial:
            _sub(disk, "serial", self.serial)
        return disk


@dataclass(frozen=True)
class Interface:
    """``<interface type='bridge'>``: a virtio NIC on a host bridge with a fixed MAC and MTU."""

    bridge: str
    mac: str
    target_dev: Optional[str] = None  # tap name on the host; None = libvirt picks vnetN
    mtu: Optional[int] = None
    model: str = "virtio"

    def to_xml(self) -> etree._Element:
        interface = etree.Element("interface", type="bridge")
        _sub(interface, "mac", address=self.mac)
        _sub(interface, "source", bridge=self.bridge)
        if self.target_dev:
            _sub(interface, "target", dev=self.target_dev)
        _sub(interface, "model", type=self.model)
        if self.mtu is not None:
            _sub(interface, "mtu", size=self.mtu)
        return interface


@dataclass(frozen=True)
class Serial:
    """``<serial>`` + ``<console>``: the guest's ttyS0, everything it prints logged to ``log_file``.

    ``kind='pty'`` keeps an interactive console (``virsh console``) and logs through virtlogd;
    ``kind='file'`` writes the output straight to the file (no input).
    """

    log_file: str
    kind: str = "pty"  # "pty" | "file"
    port: int = 0

    def to_xml(self) -> etree._Element:
        serial = etree.Element("serial", type=self.kind)
        self._source(serial)
        _sub(serial, "target", port=self.port)
        return serial

    def console_xml(self) -> etree._Element:
        """The matching ``<console>`` element (libvirt aliases it to the first serial port)."""
        console = etree.Element("console", type=self.kind)
        if self.kind == "file":  # a pty console is a copy of the serial port, log included
            self._source(console)
        _sub(console, "target", type="serial", port=self.port)
        return console

    def _source(self, parent: etree._Element) -> None:
        if self.kind == "file":
            _sub(parent, "source", path=self.log_file, append="off")
        elif self.kind == "pty":
            _sub(parent, "log", file=self.log_file, append="off")
        else:
            raise ValueError(f"serial kind must be 'pty' or 'file', not {self.kind!r}")


@dataclass(frozen=True)
class Channel:
    """``<channel>``: a virtio-serial port the guest sees as /dev/virtio-ports/<name>.

    ``kind='unix'``: a listening UNIX socket at ``path`` on the host (the guest agent);
    ``kind='file'``: everything the guest writes lands in the file at ``path``.
    """

    name: str
    path: str
    kind: str = "unix"  # "unix" | "file"

    def to_xml(self) -> etree._Element:
        channel = etree.Element("channel", type=self.kind)
        if self.kind == "unix":
            _sub(channel, "source", mode="bind", path=self.path)
        elif self.kind == "file":
            _sub(channel, "source", path=self.path, append="off")
        else:
            raise ValueError(f"channel kind must be 'unix' or 'file', not {self.kind!r}")
        _sub(channel, "target", type="virtio", name=self.name)
        return channel


@dataclass(frozen=True)
class Rng:
    """``<rng model='virtio'>``: host entropy for the guest (first-boot key generation)."""

    backend: str = "/dev/urandom"

    def to_xml(self) -> etree._Element:
        rng = etree.Element("rng", model="virtio")
        _sub(rng, "backend", self.backend, model="random")
        return rng


@dataclass(frozen=True)
class Devices:
    """``<devices>``: disks, NICs, serial console, channels, RNG; no balloon, no USB, no graphics."""

    emulator: Optional[str] = None
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    serials: tuple[Serial, ...] = ()
    channels: tuple[Channel, ...] = ()
    rng: Optional[Rng] = None
    memballoon: str = "none"
    usb: bool = False  # False: <controller type='usb' model='none'/>, no USB bus nobody uses

    def to_xml(self) -> etree._Element:
        devices = etree.Element("devices")
        if self.emulator:
            _sub(devices, "emulator", self.emulator)
        if not self.usb:
            _sub(devices, "controller", type="usb", model="none")
        for item in (*self.disks, *self.interfaces, *self.serials):
            devices.append(item.to_xml())
        for serial in self.serials[:1]:
            devices.append(serial.console_xml())
        for channel in self.channels:
            devices.append(channel.to_xml())
        _sub(devices, "memballoon", model=self.memballoon)
        if self.rng is not None:
            devices.append(self.rng.to_xml())
        return devices


# ------------------------------------------------------------------------------------------ domain


@dataclass(frozen=True)
class Domain:
    """``<domain>``: the whole guest definition."""

    name: str
    memory_kib: int
    vcpu: Vcpu
    type: str = "kvm"  # "kvm" | "qemu" (TCG)
    uuid: Optional[str] = None
    cpu: Optional[Cpu] = None
    cputune: Optional[CpuTune] = None
    numatune: Optional[NumaTune] = None
    memory_backing: Optional[MemoryBacking] = None
    os: Os = Os()
    features: Features = Features()
    clock: Clock = Clock()
    devices: Devices = Devices()
    on_poweroff: str = "destroy"
    on_reboot: str = "destroy"
    on_crash: str = "destroy"

    def to_xml(self) -> etree._Element:
        # Children in the order libvirt itself writes them (virsh dumpxml), which keeps diffs readable.
        domain = etree.Element("domain", type=self.type)
        _sub(domain, "name", self.name)
        if self.uuid:
            _sub(domain, "uuid", self.uuid)
        _sub(domain, "memory", str(self.memory_kib), unit="KiB")
        _sub(domain, "currentMemory", str(self.memory_kib), unit="KiB")
        if self.memory_backing is not None and not self.memory_backing.is_empty():
            domain.append(self.memory_backing.to_xml())
        domain.append(self.vcpu.to_xml())
        if self.cputune is not None and not self.cputune.is_empty():
            domain.append(self.cputune.to_xml())
        if self.numatune is not None:
            domain.append(self.numatune.to_xml())
        domain.append(self.os.to_xml())
        domain.append(self.features.to_xml())
        if self.cpu is not None:
            domain.append(self.cpu.to_xml())
        domain.append(self.clock.to_xml())
        _sub(domain, "on_poweroff", self.on_poweroff)
        _sub(domain, "on_reboot", self.on_reboot)
        _sub(domain, "on_crash", self.on_crash)
        domain.append(self.devices.to_xml())
        return domain


# ---------------------------------------------------------------------------- plan -> domain (pure)


@dataclass(frozen=True)
class GuestDevices:
    """Per-guest names and paths the lifecycle chooses (the plan knows nothing about files)."""

    name: str  # libvirt domain name, unique on the host
    overlay_path: Optional[str]  # per-job qcow2 overlay; None only for kernel-only images
    console_log: str
    mac: str
    bridge: str
    tap: Optional[str]  # host tap device name (<= 15 characters)
    mtu: Optional[int]
    ready_channel_path: str
    agent_channel_path: str
    seed_path: Optional[str] = None  # raw cloud-init NoCloud image (label cidata), read-only
    extra_cmdline: str = ""  # appended to the image's cmdline for direct kernel boot
    uuid: Optional[str] = None
    serial_kind: str = "pty"  # see Serial
    ready_channel_kind: str = "file"  # see Channel: "file" lets a reader that starts late still see the line


OVERLAY_TARGET = "vda"
SEED_TARGET = "vdb"  # virtio, raw, read-only: every cloud-init image finds the 'cidata' label there


def check_plan(plan: Plan) -> None:
    """Raise ValueError when a plan is inconsistent in a way libvirt would reject later, less clearly."""
    if plan.sockets * plan.cores_per_socket * plan.threads_per_core != plan.vcpus:
        raise ValueError(
            f"plan topology {plan.sockets}x{plan.cores_per_socket}x{plan.threads_per_core} "
            f"does not make {plan.vcpus} vCPUs"
        )
    if sorted(plan.vcpu_pins) != list(range(plan.vcpus)):
        raise ValueError(f"plan pins vCPUs {sorted(plan.vcpu_pins)}, expected 0..{plan.vcpus - 1}")
    if plan.cells:
        in_cells = sorted(vcpu for cell in plan.cells for vcpu in cell.vcpus)
        if in_cells != list(range(plan.vcpus)):
            raise ValueError(f"plan cells hold vCPUs {in_cells}, expected each of 0..{plan.vcpus - 1} once")
        if sum(cell.memory for cell in plan.cells) != plan.memory:
            raise ValueError("plan memory is not the sum of its cells' memory")
    unit = plan.page_size or KIB
    for memory in [plan.memory, *(cell.memory for cell in plan.cells)]:
        if memory <= 0 or memory % unit:
            raise ValueError(f"plan memory {memory} is not a positive multiple of {unit} bytes")


def build_domain(plan: Plan, config: SiteConfig, image: ImageSpec, guest: GuestDevices) -> Domain:
    """Map a placement plan, the site settings, the image and the guest's device paths onto a Domain.

    Raises ValueError for an inconsistent plan or a guest without the overlay its image needs
    (caller bugs, not user errors).
    """
    check_plan(plan)
    host = config.host
    if image.disk and not guest.overlay_path:
        raise ValueError("the image has a disk, so the guest needs an overlay path")
    if not image.disk and not image.kernel:
        raise ValueError("the image has neither a disk nor a kernel")

    cells = tuple(
        NumaCell(id=cell.id, cpus=tuple(cell.vcpus), memory_kib=cell.memory // KIB) for cell in plan.cells
    )
    cpu = Cpu(
        mode=host.cpu_mode,
        model=host.cpu_model if host.cpu_mode == "custom" else None,
        fallback=host.cpu_model_fallback,
        topology=CpuTopology(plan.sockets, plan.cores_per_socket, plan.threads_per_core),
        cells=cells,
    )
    cputune = CpuTune(
        vcpu_pins={vcpu: (pcpu,) for vcpu, pcpu in plan.vcpu_pins.items()},
        emulator_cpus=tuple(plan.emulator_cpus),
    )
    # Mirror the host: each guest cell's memory comes strictly from the host node behind it,
    # whatever the page size (strict also keeps normal pages from spilling onto other nodes).
    numatune = None
    if plan.cells:
        numatune = NumaTune(
            nodeset=tuple(sorted({cell.host_node for cell in plan.cells})),
            memnodes=tuple(MemNode(cell.id, (cell.host_node,)) for cell in plan.cells),
        )
    hugepages: tuple[HugePage, ...] = ()
    if plan.page_size > 0:
        if plan.cells:
            hugepages = tuple(HugePage(plan.page_size // KIB, (cell.id,)) for cell in plan.cells)
        else:
            hugepages = (HugePage(plan.page_size // KIB),)
    backing = MemoryBacking(hugepages=hugepages, nosharepages=host.nosharepages, locked=host.lock_memory)

    if image.kernel:
        cmdline = " ".join(part for part in (image.cmdline.strip(), guest.extra_cmdline.strip()) if part)
        os_element = Os(kernel=image.kernel, initrd=image.initrd, cmdline=cmdline or None)
    else:
        os_element = Os(boot_dev="hd")

    disks: list[Disk] = []
    if guest.overlay_path:
        disks.append(
            Disk(
                guest.overlay_path,
                OVERLAY_TARGET,
                format="qcow2",
                cache="none",
                io="native",
                backing_file=image.disk,
                backing_format=image.format,
            )
        )
    if guest.seed_path:
        disks.append(Disk(guest.seed_path, SEED_TARGET, format="raw", readonly=True))
    devices = Devices(
        emulator=host.emulator,
        disks=tuple(disks),
        interfaces=(Interface(guest.bridge, guest.mac, target_dev=guest.tap, mtu=guest.mtu),),
        serials=(Serial(guest.console_log, kind=guest.serial_kind),),
        channels=(
            Channel(AGENT_CHANNEL_NAME, guest.agent_channel_path, kind="unix"),
            Channel(READY_CHANNEL_NAME, guest.ready_channel_path, kind=guest.ready_channel_kind),
        ),
        rng=Rng(),
    )
    return Domain(
        name=guest.name,
        uuid=guest.uuid,
        type=host.domain_type,
        memory_kib=plan.memory // KIB,
        vcpu=Vcpu(plan.vcpus),
        cpu=cpu,
        cputune=cputune,
        numatune=numatune,
        memory_backing=backing,
        os=os_element,
        devices=devices,
    )


def render_domain(plan: Plan, config: SiteConfig, image: ImageSpec, guest: GuestDevices) -> etree._Element:
    """The guest's ``<domain>`` element."""
    return build_domain(plan, config, image, guest).to_xml()


def render_domain_xml(plan: Plan, config: SiteConfig, image: ImageSpec, guest: GuestDevices) -> str:
    """The guest's domain XML as text (what ``virDomainCreateXML``/``defineXML`` take)."""
    return domain_to_string(render_domain(plan, config, image, guest))


def domain_to_string(element: etree._Element) -> str:
    """Pretty-printed XML text of an element, ending with a newline."""
    return etree.tostring(element, pretty_print=True, encoding="unicode")


def canonical_xml(xml: str | bytes | etree._Element) -> str:
    """A canonical text form for semantic comparison: whitespace-only text dropped, attributes sorted.

    Two domain XMLs that differ only in indentation, quoting or attribute order give the same string
    (pretty-printed, so a test failure shows a readable diff).
    """
    if isinstance(xml, (str, bytes)):
        parser = etree.XMLParser(remove_blank_text=True, remove_comments=True)
        element = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser)
    else:
        element = copy.deepcopy(xml)
    for node in element.iter():
        if not isinstance(node.tag, str):
            continue
        if node.text is not None and not node.text.strip():
            node.text = None
        if node.tail is not None and not node.tail.strip():
            node.tail = None
        attrs = sorted(node.attrib.items())
        node.attrib.clear()
        node.attrib.update(attrs)
    etree.indent(element)
    return etree.tostring(element, encoding="unicode")


def schema_errors(xml: str, validator: str = "virt-xml-validate") -> Optional[str]:
    """Check domain XML against libvirt's own schema; None when valid, else the validator's message.

    Needs ``virt-xml-validate`` (libvirt-clients) and ``xmllint`` (libxml2-utils); raises
    FileNotFoundError when the validator is not installed.
    """
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".xml", prefix="slurm-vc-domain-") as handle:
        handle.write(xml)
        handle.flush()
        result = subprocess.run([validator, handle.name, "domain"], capture_output=True, text=True)
    if result.returncode == 0:
        return None
    return (result.stderr + result.stdout).strip() or f"{validator} exited with {result.returncode}"


__all__ = [
    "AGENT_CHANNEL_NAME",
    "READY_CHANNEL_NAME",
    "Channel",
    "Clock",
    "Cpu",
    "CpuTopology",
    "CpuTune",
    "Devices",
    "Disk",
    "Domain",
    "Features",
    "GuestDevices",
    "HugePage",
    "Interface",
    "MemNode",
    "MemoryBacking",
    "NumaCell",
    "NumaTune",
    "Os",
    "Rng",
    "Serial",
    "Timer",
    "Vcpu",
    "build_domain",
    "check_plan",
    "canonical_xml",
    "schema_errors",
    "domain_to_string",
    "render_domain",
    "render_domain_xml",
]
