"""Network namespaces, bridges and veth pairs of a sandbox: small actuators, each with its undo.

Per node ``nodeI`` (namespace ``<name>-nodeI``)::

    host ns:  <name>-cbr (10.X.0.254/24) --- <name>-cI  ==veth==  eth0 (10.X.0.I/24)   :node ns
              <name>-fab (no address)    --- <name>-fI  ==veth==  fab0 --- <name>-gbr  :node ns
                                                                  (10.X.128.I/17, the host block)

The control network carries Slurm traffic.  The guest bridge ``<name>-gbr`` lives in each node's
namespace because that node's libvirtd creates its guests' taps there; the host fabric bridge joins
the nodes' guest bridges so guests on different nodes reach each other.  Deleting a namespace deletes
the veth ends inside it and therefore their host ends too.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence

from ..errors import HostError

NETNS_DIR = "/run/netns"


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS`` (inside ``netns`` via nsenter, never ``ip netns exec``, which remounts /sys)."""
    command = ["ip", *args]
    if netns:
        command = ["nsenter", f"--net={NETNS_DIR}/{netns}", *command]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise HostError(f"`{' '.join(command)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def host_links(prefix: str) -> list[str]:
    """Host-namespace links whose names start with ``prefix``."""
    try:
        return sorted(name for name in os.listdir("/sys/class/net") if name.startswith(prefix))
    except OSError:
        return []


def netns_list(prefix: str) -> list[str]:
    """Named network namespaces whose names start with ``prefix``."""
    try:
        return sorted(name for name in os.listdir(NETNS_DIR) if name.startswith(prefix))
    except OSError:
        return []


def netns_exists(name: str) -> bool:
    return os.path.exists(f"{NETNS_DIR}/{name}")


def add_bridge(name: str, mtu: int, mac: str, address: str | None = None) -> None:
    """Create a host bridge (STP off, forward delay 0 so ports forward at once), set MTU, bring it up.

    A fixed MAC: a bridge otherwise takes its lowest port's MAC, which changes as ports come and go.
    """
    if not link_exists(name):
        ip("link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    ip("link", "set", name, "mtu", str(mtu), "address", mac)
    if address:
        ip("addr", "replace", address, "dev", name)
    ip("link", "set", name, "up")


def delete_link(name: str) -> None:
    """Delete a host link; a link already gone is fine."""
    if link_exists(name):
        ip("link", "del", name, check=False)


def add_netns(name: str) -> None:
    """Create a named network namespace with loopback up."""
    if not netns_exists(name):
        ip("netns", "add", name)
    ip("link", "set", "lo", "up", netns=name)


def delete_netns(name: str) -> None:
    """Delete a named namespace (its veth ends and their host peers go with it)."""
    if netns_exists(name):
        result = ip("netns", "del", name, check=False)
        if result.returncode != 0 and netns_exists(name):
            raise HostError(f"cannot delete network namespace {name}: {result.stderr.strip()}")


def add_veth_into(host_end: str, netns: str, ns_end: str, mtu: int, master: str) -> None:
    """A veth pair: ``host_end`` on host bridge ``master``, ``ns_end`` inside ``netns``."""
    if not link_exists(host_end):
        ip("link", "add", host_end, "mtu", str(mtu), "type", "veth", "peer", "name", ns_end, "netns", netns)
    ip("link", "set", host_end, "mtu", str(mtu), "master", master, "up")
    ip("link", "set", ns_end, "mtu", str(mtu), "up", netns=netns)


def setup_node_network(
    netns: str,
    control_veth: str,
    control_bridge: str,
    address: str,
    fabric_veth: str,
    fabric_bridge: str,
    guest_bridge: str,
    guest_bridge_mac: str,
    guest_bridge_address: str,
    mtu: int,
) -> None:
    """Give node namespace ``netns`` its control interface and its guest bridge joined to the fabric."""
    add_netns(netns)
    add_veth_into(control_veth, netns, "eth0", 1500, control_bridge)
    ip("addr", "replace", address, "dev", "eth0", netns=netns)
    add_veth_into(fabric_veth, netns, "fab0", mtu, fabric_bridge)
    result = ip("link", "show", guest_bridge, netns=netns, check=False)
    if result.returncode != 0:
        ip("link", "add", guest_bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0", netns=netns)
    ip("link", "set", guest_bridge, "mtu", str(mtu), "address", guest_bridge_mac, netns=netns)
    ip("link", "set", "fab0", "master", guest_bridge, netns=netns)
    ip("addr", "replace", guest_bridge_address, "dev", guest_bridge, netns=netns)
    ip("link", "set", guest_bridge, "up", netns=netns)


def addresses_in_use() -> list[tuple[str, str]]:
    """(interface, address/prefix) of every IPv4 address in the host namespace."""
    result = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True)
    if result.returncode != 0:
        return []
    found = []
    for link in json.loads(result.stdout or "[]"):
        for info in link.get("addr_info", []):
            found.append((link.get("ifname", "?"), f"{info['local']}/{info['prefixlen']}"))
    return found


def link_summary(names: Sequence[str], netns: str | None = None) -> dict[str, dict]:
    """name -> {exists, mtu, state} for status output."""
    out: dict[str, dict] = {}
    for name in names:
        result = ip("-j", "link", "show", name, netns=netns, check=False)
        if result.returncode != 0:
            out[name] = {"exists": False}
            continue
        info = (json.loads(result.stdout or "[]") or [{}])[0]
        out[name] = {"exists": True, "mtu": info.get("mtu"), "state": info.get("operstate")}
    return out
