"""Site configuration: the TOML file an admin writes, validated by pydantic models.

The file lives at ``/etc/slurm/vcluster.toml`` unless ``SLURM_VC_CONFIG`` or ``--config`` says
otherwise.  Unknown keys are errors, and every error names the file, the key and what is allowed.
See ``packaging/vcluster.toml.example`` for a commented example.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The file's location, its TOML reading and these constants live in the pydantic-free configfile
# module (the submit-time check and the TaskProlog use it alone); they stay importable from here.
from .configfile import (  # noqa: F401
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    IMAGE_NAME_RE,
    PAGE_SIZES,
    config_path,
    read_toml,
)
from .errors import ConfigError, UsageError
from .network import check_domain, check_hostname_format, check_ports
from .units import SIZE_HELP, parse_size

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class _Strict(BaseModel):
    """Unknown keys are errors, and values keep their TOML types: ``true`` is not a number of cores,
    ``"yes"`` not a boolean, ``"120"`` not a number of seconds (sizes take strings, see _size_field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        # They end up in paths, domain XML and command lines, where they break things far from here.
        if isinstance(value, str) and _CONTROL_RE.search(value):
            raise ValueError(f"must not contain control characters (tab, newline, ...): {value!r}")
        return value


def _absolute_path(value: Optional[str]) -> Optional[str]:
    if value is not None and not os.path.isabs(value):
        raise ValueError(f"must be an absolute path, got {value!r}")
    return value


def _size_field(value: object, what: str, *, zero_allowed: bool = False) -> int:
    """A memory size from the config file in bytes.  A bare TOML number is MiB, as a string without
    a unit is (``4096`` and ``"4096"`` both mean 4 GiB), since Slurm counts memory in MiB too."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"invalid {what} {value!r}: expected {SIZE_HELP}")
    if zero_allowed and str(value).strip() == "0":
        return 0
    try:
        return parse_size(str(value), what=what)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


class Readiness(_Strict):
    """How the lifecycle decides a guest is ready."""

    probe: Literal["agent", "serial", "tcp"] = "serial"
    # serial: a line on the virtio-serial port "org.slurm-vc.ready" (or the console) containing this text
    serial_line: str = "SLURM-VC-READY"
    tcp_port: int = Field(22, ge=1, le=65535)


class ImageSpec(_Strict):
    """One catalog entry: a disk image, a direct-kernel boot, or both."""

    description: str = ""
    disk: Optional[str] = None
    format: Literal["qcow2", "raw"] = "qcow2"
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    cmdline: str = ""
    seed: Literal["cloud-init", "cmdline", "both"] = "cloud-init"
    readiness: Readiness = Readiness()
    login_user: str = "root"
    default_vcpus: Optional[int] = Field(None, ge=1, le=4096)
    default_memory: Optional[int] = None

    @field_validator("default_memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> Optional[int]:
        return None if value is None else _size_field(value, "default_memory")

    @field_validator("disk", "kernel", "initrd")
    @classmethod
    def _absolute(cls, value: Optional[str]) -> Optional[str]:
        return _absolute_path(value)

    @model_validator(mode="after")
    def _bootable(self) -> ImageSpec:
        if not self.disk and not self.kernel:
            raise ValueError("an image needs 'disk' (a disk image) or 'kernel' (direct kernel boot), or both")
        if self.initrd and not self.kernel:
            raise ValueError("'initrd' needs 'kernel'")
        return self


class HostSettings(_Strict):
    """What the hypervisor and the host give every guest on this site."""

    libvirt_uri: str = "qemu:///system"
    domain_type: Literal["kvm", "qemu"] = "kvm"
    cpu_mode: Literal["host-passthrough", "host-model", "custom"] = "host-passthrough"
    cpu_model: Optional[str] = None
    cpu_model_fallback: Literal["allow", "forbid"] = "allow"
    hugepage_size: Literal["2M", "1G", "none"] = "2M"
    lock_memory: bool = False
    nosharepages: bool = True
    reserved_cores: int = Field(0, ge=0, le=1024)
    reserved_memory: int = 1024 * 1024 * 1024
    allow_smt_siblings: bool = False
    emulator: Optional[str] = None
    # Where libvirt writes each guest's QEMU log (<dir>/<domain>.log): read when a guest stops before
    # it is ready, to tell a QEMU the host killed (a node fault) from a guest that stopped itself.
    libvirt_log_dir: str = "/var/log/libvirt/qemu"

    @field_validator("reserved_memory", mode="before")
    @classmethod
    def _reserved(cls, value: object) -> int:
        return _size_field(value, "reserved_memory", zero_allowed=True)

    @field_validator("emulator", "libvirt_log_dir")
    @classmethod
    def _paths(cls, value: Optional[str]) -> Optional[str]:
        return _absolute_path(value)

    @model_validator(mode="after")
    def _model(self) -> HostSettings:
        if self.cpu_mode == "custom" and not self.cpu_model:
            raise ValueError("cpu_mode = 'custom' needs cpu_model (e.g. 'Skylake-Server')")
        if self.domain_type == "qemu" and self.cpu_mode == "host-passthrough":
            if "cpu_mode" in self.model_fields_set:
                # libvirt refuses host-passthrough for TCG guests ("not supported by hypervisor").
                raise ValueError(
                    "cpu_mode = 'host-passthrough' needs domain_type = 'kvm'; with 'qemu' (TCG) use"
                    " 'host-model' or 'custom' with cpu_model"
                )
            # The default follows the domain type: TCG cannot pass the host CPU through.
            object.__setattr__(self, "cpu_mode", "host-model")
        return self


class NetworkSettings(_Strict):
    """The guest network: bridge, addressing scheme and isolation."""

    bridge: str = "vcbr0"
    mtu: int = Field(1500, ge=576, le=65520)
    subnet: str = "10.96.0.0/12"
    # Each job gets one block of this prefix length from the subnet; block 0 is kept for host addresses.
    block_prefix: int = Field(24, ge=8, le=30)
    mac_prefix: str = "52:54:00"
    domain: str = "vc"
    hostname_format: str = "vc{job}-{index}"
    isolation: Literal["nftables", "none"] = "nftables"
    allowed_host_ports: list[int] = []

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 network in CIDR form: {exc}") from None
        if not net.is_private:
            raise ValueError("must be a private (RFC 1918) network")
        if net.prefixlen > 24:
            raise ValueError("must be /24 or larger (each job gets a block of addresses)")
        return value

    @field_validator("mac_prefix")
    @classmethod
    def _mac(cls, value: str) -> str:
        if not re.match(r"^[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}$", value.lower()):
            raise ValueError("must be three hex octets like '52:54:00'")
        if int(value[:2], 16) & 1:
            raise ValueError("first octet must be unicast (even)")
        return value.lower()

    @model_validator(mode="after")
    def _blocks(self) -> NetworkSettings:
        if self.block_prefix <= ipaddress.IPv4Network(self.subnet).prefixlen:
            raise ValueError("block_prefix must be longer than the subnet's prefix (block 0 is for hosts)")
        return self

    @field_validator("hostname_format")
    @classmethod
    def _hostname_format(cls, value: str) -> str:
        check_hostname_format(value)
        return value

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        check_domain(value)
        return value

    @field_validator("allowed_host_ports")
    @classmethod
    def _ports(cls, ports: list[int]) -> list[int]:
        check_ports(ports)
        return ports

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", value):
            raise ValueError("must be a Linux interface name (1-15 of A-Z a-z 0-9 _ . -)")
        return value


class Timeouts(_Strict):
    """Bounds on every wait, in seconds."""

    ready: float = Field(120.0, gt=0, le=3600)
    destroy: float = Field(30.0, gt=0, le=600)
    hugepage_compact_retries: int = Field(3, ge=0, le=20)
    lock: float = Field(30.0, gt=0, le=600)


class SiteConfig(_Strict):
    """The whole site configuration."""

    state_dir: str = "/var/lib/slurm-vc"
    # State that must die with the boot, like the kernel objects it describes (hugepage ledgers: a
    # pool does not survive a reboot either).  Meant for a tmpfs: keeps those writes off the disk.
    runtime_dir: str = "/run/slurm-vc"
    # Secret shared by every compute node, from which each job's SSH key pair is derived (jobkey.py).
    job_key_secret: str = "/etc/munge/munge.key"
    host: HostSettings = HostSettings()
    network: NetworkSettings = NetworkSettings()
    timeouts: Timeouts = Timeouts()
    images: dict[str, ImageSpec] = {}
    source: str = Field("<defaults>", exclude=True)

    @field_validator("state_dir", "runtime_dir", "job_key_secret")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return _absolute_path(value)

    @field_validator("images")
    @classmethod
    def _names(cls, images: dict[str, ImageSpec]) -> dict[str, ImageSpec]:
        for name in images:
            if not re.match(IMAGE_NAME_RE, name):
                raise ValueError(
                    f"image name {name!r} is not allowed: use lower-case letters, digits, '.', '_' and '-'"
                    " (at most 63, starting with a letter or digit)"
                )
        return images

    @property
    def page_size(self) -> int:
        """Hugepage size in bytes, 0 when guests use normal pages."""
        return PAGE_SIZES[self.host.hugepage_size]


def _format_validation_error(path: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key '{key}'")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: key '{key}': {message}")
    return "; ".join(lines)


def config_from_mapping(data: dict, source: str = "<mapping>") -> SiteConfig:
    """Validate a parsed TOML mapping.  Raises ConfigError naming ``source`` and the key."""
    if "source" in data:
        raise ConfigError(f"{source}: unknown key 'source'")
    try:
        return SiteConfig.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(explicit: Optional[str] = None) -> SiteConfig:
    """Read and validate the site configuration file."""
    path = config_path(explicit)
    return config_from_mapping(read_toml(path), source=path)
