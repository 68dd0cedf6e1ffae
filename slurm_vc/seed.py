"""The guest configuration seed: what a guest must know about itself and its peers at boot.

One :class:`SeedSpec` is rendered three ways, all from the same data:

* a cloud-init **NoCloud** seed (``meta-data``, ``user-data``, ``network-config``), so stock cloud
  images (CentOS 7, Rocky, Debian, Ubuntu) configure themselves with their own cloud-init;
* ``slurm-vc.env``, a plain ``KEY=VALUE`` file on the same disk that the tiny test guest's busybox
  init reads (``guest/tiny-init``): it cannot parse YAML;
* ``vc.*`` kernel parameters (:func:`kernel_cmdline`) for direct-kernel images without a seed disk.

The ISO is written with **pycdlib** (pure Python, maintained, on PyPI and in Debian as
python3-pycdlib): no subprocess and no dependency on an ISO tool being installed on every compute
node, the write is atomic (temporary file + rename), it takes milliseconds, and the same library
reads the ISO back in tests.  The result is what ``cloud-localds`` (genisoimage) makes: ISO 9660
with Rock Ridge and Joliet names, volume label ``cidata`` (lower case: old cloud-init releases
such as CentOS 7's look the label up case-sensitively).

Choices that matter inside the guest (see the issue and docs/platform notes):

* network-config is **version 1**, cloud-init's original format, read by every release that stock
  images ship, the old one in CentOS 7 images included (version 2 support came later).  The NIC is
  matched by MAC and named ``eth0`` (udev renames interfaces otherwise); static address, optional
  gateway, MTU; no DHCP.
* ``manage_etc_hosts: false`` and ``/etc/hosts`` written by ``write_files``: cloud-init's own
  template maps the node's name to 127.0.1.1, and MPI would then advertise loopback.
* permanent ARP entries for every peer are set in ``bootcmd``, which runs on every boot (the
  kernel forgets neighbour entries on reboot; ``runcmd`` runs only once per instance).
* the job's SSH public key goes to ``login_user`` through a ``users`` entry (for root too, so no
  default user is created); for root, ``disable_root: false``.

Proven with Debian 12's own cloud-init by tests/integration/test_cloudinit_seed.py.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Optional, Sequence

import yaml

from .errors import ConfigError, HostError, ImageError

SEED_LABEL = "cidata"
ENV_FILE = "slurm-vc.env"
GUEST_IFACE = "eth0"
# x86 COMMAND_LINE_SIZE is 2048 bytes including the terminating NUL.
KERNEL_CMDLINE_MAX = 2047
# Seconds the ARP bootcmd waits for eth0 to carry its address (some distributions bring the
# network up in parallel with cloud-init's bootcmd, and a link going up flushes neighbours).
ARP_WAIT_SECONDS = 30

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\Z")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
_KEY_RE = re.compile(
    r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/]+=*( [^\r\n]*)?\Z"
)
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def _bad(field_name: str, value: object, why: str) -> ConfigError:
    return ConfigError(f"guest seed: {field_name} {value!r} {why}")


def _check_ip(field_name: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise _bad(field_name, value, "is not an IPv4 address") from None


def _check_mac(field_name: str, value: str) -> str:
    mac = value.lower()
    if not _MAC_RE.match(mac):
        raise _bad(field_name, value, "is not a MAC address like 52:54:00:12:34:56")
    return mac


def _check_int(field_name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(field_name, value, f"must be an integer from {low} to {high}")
    return value


def _check_hostname(field_name: str, value: str) -> str:
    if not _HOSTNAME_RE.match(value):
        raise _bad(field_name, value, "is not a valid host name (letters, digits, '-', dots between labels)")
    return value


@dataclass(frozen=True)
class SeedSpec:
    """Everything one guest is told at boot.  Validated on construction (raises ConfigError).

    ``hosts`` are /etc/hosts entries as (ip, names) where names is one host name or several
    separated by spaces (the first is canonical); include the guest itself.  ``arp`` lists
    (ip, mac) of the peers; an entry for the guest's own address is ignored.
    """

    hostname: str
    instance_id: str
    ip: str
    prefixlen: int
    mac: str
    mtu: int = 1500
    gateway: Optional[str] = None
    hosts: Sequence[tuple[str, str]] = field(default_factory=tuple)
    arp: Sequence[tuple[str, str]] = field(default_factory=tuple)
    ssh_authorized_keys: Sequence[str] = field(default_factory=tuple)
    login_user: str = "root"

    def __post_init__(self) -> None:
        _check_hostname("hostname", self.hostname)
        if "." in self.hostname:
            raise _bad("hostname", self.hostname, "must be a short name (put the FQDN in hosts)")
        if not _INSTANCE_RE.match(self.instance_id):
            raise _bad("instance_id", self.instance_id, "must be 1-128 of: letters digits . _ : -")
        object.__setattr__(self, "ip", _check_ip("ip", self.ip))
        _check_int("prefixlen", self.prefixlen, 1, 32)
        object.__setattr__(self, "mac", _check_mac("mac", self.mac))
        _check_int("mtu", self.mtu, 68, 65535)
        if self.gateway is not None:
            object.__setattr__(self, "gateway", _check_ip("gateway", self.gateway))
        hosts = []
        for entry in self.hosts:
            ip, names = entry
            names_list = str(names).split()
            if not names_list:
                raise _bad("hosts entry", entry, "has no host name")
            for name in names_list:
                _check_hostname("hosts entry name", name)
            hosts.append((_check_ip("hosts entry", ip), " ".join(names_list)))
        object.__setattr__(self, "hosts", tuple(hosts))
        arp = tuple((_check_ip("arp entry", ip), _check_mac("arp entry", mac)) for ip, mac in self.arp)
        object.__setattr__(self, "arp", arp)
        keys = []
        for key in self.ssh_authorized_keys:
            key = key.strip()
            if not _KEY_RE.match(key):
                raise _bad("ssh key", key[:40], "is not one OpenSSH public key line")
            keys.append(key)
        object.__setattr__(self, "ssh_authorized_keys", tuple(keys))
        if not _USER_RE.match(self.login_user):
            raise _bad("login_user", self.login_user, "is not a valid user name")

    @property
    def peer_arp(self) -> tuple[tuple[str, str], ...]:
        """ARP entries without the guest's own address (its own NIC needs none)."""
        return tuple((ip, mac) for ip, mac in self.arp if ip != self.ip)


# libyaml's emitter when PyYAML was built with it (5x faster for a 256-node job's tables).
_BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _SeedDumper(_BaseDumper):  # type: ignore[misc,valid-type]
    """Safe dumper that writes multi-line strings as literal blocks (readable /etc/hosts)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and "\t" not in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SeedDumper.add_representer(str, _represent_str)


def _yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_SeedDumper, sort_keys=False, default_flow_style=False, width=1000)


def render_etc_hosts(spec: SeedSpec) -> str:
    """The guest's /etc/hosts: localhost, then every entry (the own name on its real address)."""
    lines = [
        "# written by slurm-vc at boot; the node's own name maps to its cluster address",
        "127.0.0.1 localhost",
        "::1 localhost ip6-localhost ip6-loopback",
    ]
    lines += [f"{ip} {names}" for ip, names in spec.hosts]
    return "\n".join(lines) + "\n"


def render_meta_data(spec: SeedSpec) -> str:
    """NoCloud ``meta-data``: instance id (a new id makes cloud-init run per-instance steps) and name."""
    return _yaml({"instance-id": spec.instance_id, "local-hostname": spec.hostname})


def render_network_config(spec: SeedSpec) -> str:
    """NoCloud ``network-config``, version 1: NIC matched by MAC, named eth0, static, MTU."""
    subnet: dict[str, object] = {"type": "static", "address": f"{spec.ip}/{spec.prefixlen}"}
    if spec.gateway:
        subnet["gateway"] = spec.gateway
    iface = {
        "type": "physical",
        "name": GUEST_IFACE,
        "mac_address": spec.mac,
        "mtu": spec.mtu,
        "subnets": [subnet],
    }
    return _yaml({"version": 1, "config": [iface]})


def _arp_bootcmd(spec: SeedSpec) -> list[str]:
    """Shell lines for cloud-init's bootcmd: wait for eth0's address, then one permanent entry per peer."""
    if not spec.peer_arp:
        return []
    wait = (
        f"i=0; while [ $i -lt {ARP_WAIT_SECONDS} ] && ! ip -4 addr show dev {GUEST_IFACE} 2>/dev/null"
        f" | grep -q 'inet {spec.ip}/'; do sleep 1; i=$((i+1)); done"
    )
    lines = [wait]
    for ip, mac in spec.peer_arp:
        # iproute2 first (every current image has it); net-tools' arp for old ones.
        lines.append(
            f"ip neigh replace {ip} lladdr {mac} dev {GUEST_IFACE} nud permanent"
            f" || arp -i {GUEST_IFACE} -s {ip} {mac}"
        )
    return lines


def render_user_data(spec: SeedSpec) -> str:
    """NoCloud ``user-data`` (#cloud-config): hostname, /etc/hosts, ARP bootcmd, SSH key."""
    data: dict[str, object] = {
        "hostname": spec.hostname,
        "preserve_hostname": False,
        "manage_etc_hosts": False,
        "ssh_pwauth": False,
    }
    bootcmd = _arp_bootcmd(spec)
    if bootcmd:
        data["bootcmd"] = bootcmd
    data["write_files"] = [
        {"path": "/etc/hosts", "owner": "root:root", "permissions": "0644", "content": render_etc_hosts(spec)}
    ]
    # The key goes to login_user through a `users` entry (for root too: cloud-init then only
    # adds the key, and no default user is created).  disable_root: false keeps root's key
    # free of cloud-init's "Please login as ..." prefix.
    user: dict[str, object] = {"name": spec.login_user, "lock_passwd": True}
    if spec.login_user != "root":
        user["shell"] = "/bin/bash"
        user["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    user["ssh_authorized_keys"] = list(spec.ssh_authorized_keys)
    data["disable_root"] = spec.login_user != "root"
    data["users"] = [user]
    return "#cloud-config\n" + _yaml(data)


def render_env(spec: SeedSpec) -> str:
    """``slurm-vc.env`` for the tiny guest: ``key=value`` lines, ``host``/``arp``/``ssh_key`` repeat.

    Not shell syntax: the guest reads it line by line and splits at the first ``=``.
    """
    lines = [
        "# slurm-vc guest seed (read by guest/tiny-init); key=value, host/arp/ssh_key repeat",
        "version=1",
        f"instance_id={spec.instance_id}",
        f"hostname={spec.hostname}",
        f"ip={spec.ip}",
        f"prefixlen={spec.prefixlen}",
        f"mac={spec.mac}",
        f"mtu={spec.mtu}",
    ]
    if spec.gateway:
        lines.append(f"gateway={spec.gateway}")
    lines.append(f"login_user={spec.login_user}")
    lines += [f"host={ip} {names}" for ip, names in spec.hosts]
    lines += [f"arp={ip} {mac}" for ip, mac in spec.peer_arp]
    lines += [f"ssh_key={key}" for key in spec.ssh_authorized_keys]
    return "\n".join(lines) + "\n"


def kernel_cmdline(spec: SeedSpec, base: str = "") -> str:
    """``base`` plus the ``vc.*`` parameters the tiny guest reads when it has no seed disk.

    Host aliases are joined with ':' and SSH key comments dropped (the command line has no
    quoting the guest can rely on).  Raises ImageError when the result exceeds the kernel's
    2047-byte limit: such a job needs an image that reads the seed disk.
    """
    params = [
        f"vc.hostname={spec.hostname}",
        f"vc.ip={spec.ip}/{spec.prefixlen}",
        f"vc.mac={spec.mac}",
        f"vc.mtu={spec.mtu}",
    ]
    if spec.gateway:
        params.append(f"vc.gw={spec.gateway}")
    params.append(f"vc.user={spec.login_user}")
    if spec.hosts:
        params.append("vc.hosts=" + ",".join(f"{ip}:{names.replace(' ', ':')}" for ip, names in spec.hosts))
    if spec.peer_arp:
        params.append("vc.arp=" + ",".join(f"{ip}@{mac}" for ip, mac in spec.peer_arp))
    if spec.ssh_authorized_keys:
        params.append("vc.keys=" + ",".join(":".join(key.split()[:2]) for key in spec.ssh_authorized_keys))
    cmdline = " ".join(part for part in [base.strip(), *params] if part)
    if len(cmdline) > KERNEL_CMDLINE_MAX:
        raise ImageError(
            f"the guest configuration for {spec.hostname} needs a {len(cmdline)}-byte kernel command line"
            f" (the limit is {KERNEL_CMDLINE_MAX}): too many peers for a command-line-only image;"
            " use an image with seed = 'cloud-init' or 'both'"
        )
    return cmdline


def seed_files(spec: SeedSpec) -> dict[str, str]:
    """The files of the seed disk, by name."""
    return {
        "meta-data": render_meta_data(spec),
        "user-data": render_user_data(spec),
        "network-config": render_network_config(spec),
        ENV_FILE: render_env(spec),
    }


def _iso9660_name(name: str) -> str:
    # Level-3 ISO 9660 names allow only A-Z 0-9 _ and one dot; Linux and cloud-init use the
    # Rock Ridge name, Windows-style readers the Joliet one.
    stem, dot, ext = name.upper().replace("-", "_").partition(".")
    return f"/{stem}.{ext if dot else ''};1"


def write_seed_iso(spec: SeedSpec, path: str) -> str:
    """Write the NoCloud seed ISO (label ``cidata``) to ``path`` atomically; return the path.

    The directory must exist.  A file system failure (full disk, permissions) is the node's
    fault and raises HostError; no partial file is left behind.
    """
    import pycdlib  # imported here: the renderers must stay importable without it

    directory = os.path.dirname(os.path.abspath(path))
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    for name, text in seed_files(spec).items():
        data = text.encode("utf-8")
        iso.add_fp(io.BytesIO(data), len(data), _iso9660_name(name), rr_name=name, joliet_path="/" + name)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".seed-", suffix=".iso", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            iso.write_fp(handle)
        # Readable by the QEMU user (libvirt may run QEMU unprivileged); it holds no secret.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise HostError(f"cannot write the guest seed {path}: {exc.strerror or exc}") from None
    finally:
        iso.close()
        if tmp is not None:
            remove_seed(tmp)
    return path


def remove_seed(path: str) -> None:
    """Undo :func:`write_seed_iso`: remove the ISO.  Idempotent (a missing file is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise HostError(f"cannot remove the guest seed {path}: {exc.strerror or exc}") from None
