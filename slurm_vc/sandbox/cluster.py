"""A real N-node Slurm cluster on one machine: ``slurm-vc sandbox up | status | down | exec``.

What ``up`` starts (every process recorded by PID and start time in ``<base>/state.json`` *before*
the next step, so ``down`` can undo any prefix of an interrupted ``up``):

- a private ``munged`` (as the munge user) on ``<base>/munge/munge.socket``; slurm.conf points
  ``AuthInfo=socket=`` at it, so the sandbox neither needs nor disturbs a system munged;
- ``slurmctld`` in the host network namespace (its own UTS namespace, hostname ``<name>-ctld``),
  listening on the control bridge ``<name>-cbr`` at 10.X.0.254 and on a port derived from the name;
- per node ``nodeI``: a network namespace ``<name>-nodeI`` (control veth 10.X.0.I, guest bridge
  ``<name>-gbr`` joined through a veth to the host fabric bridge ``<name>-fab``), a private libvirtd
  in it (``slurm_vc.sandbox.libvirtd.PrivateLibvirtd``), and ``slurmd -N nodeI`` in that network
  namespace plus its own UTS namespace (hostname ``nodeI``);
- an unprivileged user for jobs (``vcuser`` by default; created once, shared, never deleted).

See :mod:`slurm_vc.sandbox.layout` for the base directory layout.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..errors import HostError, SlurmError, UsageError
from ..hugepages import LEDGER_SUBDIR, parse_ledger_name
from . import net, procs
from .layout import (
    DEFAULT_BRIDGE_MTU,
    DEFAULT_NAME,
    DEFAULT_ROOT,
    SandboxLayout,
    layout_for,
    node_memory_mb,
    node_names,
)
from .procs import ProcRef
from .render import (
    Hooks,
    SiteOptions,
    render_cgroup_conf,
    render_hook_wrapper,
    render_launcher,
    render_plugstack_conf,
    render_slurm_conf,
    site_config_mapping,
    to_toml,
)
from .state import SandboxState

REPO = Path(__file__).resolve().parents[2]
DEFAULT_USER = "vcuser"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MUNGE_KEY = "/etc/munge/munge.key"
GUEST_OUT = REPO / "guest" / "out"
UP_TIMEOUT = 60.0
# Processes `down` may find by their arguments when the recorded state is lost.
DAEMON_COMMS = (
    "munged",
    "slurmctld",
    "slurmd",
    "slurmstepd",
    "libvirtd",
    "virtlogd",
    "python",
    "python3",
    "qemu-system-x86",  # comm is cut at 15 characters
)


def venv_bin() -> str:
    """The bin dir of the Python environment running us (it holds ``slurm-vc``)."""
    return str(Path(sys.prefix) / "bin")


def _log(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


class Sandbox:
    """One sandbox cluster, by name.  All methods need root except reading the layout."""

    def __init__(self, name: str = DEFAULT_NAME, root: str = DEFAULT_ROOT, quiet: bool = False):
        self.layout: SandboxLayout = layout_for(name, root)
        self.quiet = quiet

    # -- small helpers --------------------------------------------------------------------------
    @property
    def base(self) -> Path:
        return self.layout.base

    def _say(self, message: str) -> None:
        if not self.quiet:
            _log(message)

    def state(self) -> SandboxState:
        return SandboxState.load(self.layout.state_file)

    @property
    def nodes(self) -> list[str]:
        """Node names of the running (or last recorded) sandbox."""
        return list(self.state().data.get("nodes", []))

    @property
    def user(self) -> str:
        return str(self.state().data.get("user", DEFAULT_USER))

    def client_env(self, user: Optional[str] = None) -> dict[str, str]:
        """Environment for Slurm client commands against this sandbox (SLURM_CONF, PATH, ...)."""
        name = user or "root"
        try:
            home = pwd.getpwnam(name).pw_dir
        except KeyError:
            home = "/"
        env = {
            "PATH": self._path(),
            "SLURM_CONF": str(self.layout.slurm_conf),
            "SLURM_VC_CONFIG": str(self.layout.login_config),
            "HOME": home,
            "USER": name,
            "LOGNAME": name,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        if "TERM" in os.environ:
            env["TERM"] = os.environ["TERM"]
        return env

    def _path(self) -> str:
        """PATH for everything run against the sandbox: its slurm-vc launcher, the venv, the system."""
        return f"{self.layout.bin}:{venv_bin()}:{SYSTEM_PATH}"

    def is_up(self) -> bool:
        """True when up completed and every recorded daemon is still alive."""
        data = self.state().data
        if not data.get("complete"):
            return False
        return all(procs.alive(ProcRef.from_json(ref)) for ref in data.get("procs", {}).values())

    # -- up -------------------------------------------------------------------------------------
    def up(
        self,
        nodes: int = 3,
        bridge_mtu: int = DEFAULT_BRIDGE_MTU,
        guest_mtu: int = 1500,
        user: str = DEFAULT_USER,
        libvirt: bool = True,
        timeout: float = UP_TIMEOUT,
    ) -> None:
        """Bring the sandbox up (after cleaning whatever an earlier up/down left).  Raises on failure."""
        _require_root()
        _require_tools()
        names = node_names(nodes)
        if not 1280 <= bridge_mtu <= 65520 or not 576 <= guest_mtu <= bridge_mtu:
            raise UsageError("need 1280 <= --mtu <= 65520 and 576 <= --guest-mtu <= --mtu")
        started = time.monotonic()
        with self._locked():
            self._up_locked(names, bridge_mtu, guest_mtu, user, libvirt, timeout, started)

    def _up_locked(
        self,
        names: list[str],
        bridge_mtu: int,
        guest_mtu: int,
        user: str,
        libvirt: bool,
        timeout: float,
        started: float,
    ) -> None:
        nodes = len(names)
        if self.is_up() and self.state().data.get("nodes") == names:
            self._say(f"{self.layout.name} is already up with {nodes} node(s)")
            return
        self._down_locked(keep_logs=False)
        self._check_collisions()
        layout = self.layout
        for sub in ("etc", "bin", "hooks", "log", "run", "munge", "ctld/state", "libvirt"):
            (layout.base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(layout.base, 0o755)
        state = SandboxState(layout.state_file)
        state.data = {
            "name": layout.name,
            "nodes": names,
            "octet": layout.octet,
            "ctld_port": layout.ctld_port,
            "user": user,
            "complete": False,
            "procs": {},
            "netns": [],
            "links": [],
            "warnings": [],
            "started": time.time(),
        }
        state.save()
        try:
            self._up(state, names, bridge_mtu, guest_mtu, user, libvirt, timeout)
        except BaseException:
            self._say("up failed; cleaning up (logs kept in " + str(layout.log) + ")")
            self._down_locked(keep_logs=True)
            raise
        state.set("complete", True)
        self._say(f"{layout.name} up: {nodes} node(s) in {time.monotonic() - started:.1f} s")

    def _up(
        self,
        state: SandboxState,
        names: list[str],
        bridge_mtu: int,
        guest_mtu: int,
        user: str,
        libvirt: bool,
        timeout: float,
    ) -> None:
        if ensure_user(user):
            state.set("created_user", user)
        warnings = self._install_launcher(user)
        hooks, hook_warnings = self._install_hooks()
        warnings += hook_warnings
        for warning in warnings:
            self._say("warning: " + warning)
        state.set("warnings", warnings)
        self._build_guest()
        self._write_configs(names, guest_mtu, hooks)

        self._start_munged(state)
        _crash_point("munged")
        self._setup_network(state, names, bridge_mtu)
        _crash_point("network")
        self._start_slurmctld(state)
        _crash_point("slurmctld")

        libvirt_errors: list[str] = []
        threads = []
        if libvirt:
            threads = self._start_libvirtds(state, names, libvirt_errors)
        for node in names:
            self._start_slurmd(state, node)
        for thread in threads:
            thread.join()
        if libvirt_errors:
            raise HostError("; ".join(libvirt_errors))
        _crash_point("slurmd")
        self._wait_nodes_idle(names, timeout)

    def _check_collisions(self) -> None:
        """Refuse a subnet or port that something else on this machine already uses."""
        layout = self.layout
        for ifname, address in net.addresses_in_use():
            host = ipaddress.IPv4Address(address.split("/")[0])
            if host in layout.sandbox_net and not ifname.startswith(layout.link_prefix):
                raise HostError(
                    f"subnet {layout.sandbox_net} of sandbox {layout.name!r} is already used by {ifname} "
                    f"({address}): choose another --name"
                )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # Like slurmctld itself: a dead sandbox's TIME_WAIT sockets must not count as "in use".
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", layout.ctld_port))
            except OSError:
                raise HostError(
                    f"port {layout.ctld_port} (slurmctld of sandbox {layout.name!r}) is in use: "
                    "choose another --name"
                ) from None

    def _install_launcher(self, user: str) -> list[str]:
        """Write bin/slurm-vc with a Python the job user can run; warnings when there is none."""
        python, pythonpath, warnings = pick_python(user)
        self.layout.launcher.write_text(render_launcher(python, pythonpath))
        os.chmod(self.layout.launcher, 0o755)
        return warnings

    def _install_hooks(self) -> tuple[Hooks, list[str]]:
        """Wrappers for the working tree's prolog/epilog/task prolog, and the SPANK plugin."""
        layout = self.layout
        warnings: list[str] = []
        path_dirs = self._path().split(":")
        found = find_hook_executables(REPO)
        wrappers: dict[str, Optional[str]] = {}
        for role in ("prolog", "epilog", "task-prolog", "exec"):
            target = found.get(role)
            if target is None:
                warnings.append(
                    f"no {role} executable in {REPO}/{{{','.join(HOOK_DIRS)}}}: {role} not configured"
                )
                wrappers[role] = None
                continue
            wrapper = layout.hooks / (role if role != "exec" else "slurm-vc-exec")
            wrapper.write_text(render_hook_wrapper(layout, path_dirs, [target]))
            os.chmod(wrapper, 0o755)
            wrappers[role] = str(wrapper)
        plugin, warning = build_spank_plugin(REPO)
        plugstack = None
        if plugin:
            args = spank_args(layout, str(layout.launcher), wrappers["exec"])
            layout.plugstack_conf.write_text(render_plugstack_conf(plugin, args))
            plugstack = str(layout.plugstack_conf)
        else:
            warnings.append(warning or "SPANK plugin not built")
        hooks = Hooks(
            prolog=wrappers["prolog"],
            epilog=wrappers["epilog"],
            task_prolog=wrappers["task-prolog"],
            plugstack=plugstack,
        )
        return hooks, warnings

    def _build_guest(self) -> None:
        """Build the test guests into guest/out: tiny (skipped in ~0.1 s when its inputs did not
        change) and the benchmark's null guest (81 bytes, written only when they changed)."""
        builders = (
            ["sh", str(REPO / "guest" / "build-tiny-guest.sh")],
            [sys.executable, str(REPO / "guest" / "build-null-guest.py")],
        )
        for builder in builders:
            script = builder[-1]
            if not Path(script).exists():
                continue
            result = subprocess.run(
                [*builder, str(GUEST_OUT)], capture_output=True, text=True, env={"PATH": SYSTEM_PATH}
            )
            if result.returncode != 0:
                self._say(f"warning: {script} failed: {(result.stderr or result.stdout).strip()[-300:]}")

    def _write_configs(self, names: list[str], guest_mtu: int, hooks: Hooks) -> None:
        layout = self.layout
        memory = node_memory_mb(_total_memory_mb(), len(names))
        layout.slurm_conf.write_text(render_slurm_conf(layout, names, memory, hooks))
        (layout.etc / "cgroup.conf").write_text(render_cgroup_conf())
        options = SiteOptions(images=catalog_images(GUEST_OUT), guest_mtu=guest_mtu)
        layout.login_config.write_text(to_toml(site_config_mapping(layout, None, options)))
        for node in names:
            layout.node_config(node).write_text(to_toml(site_config_mapping(layout, node, options)))
            for sub in ("spool", "state"):
                (layout.node_dir(node) / sub).mkdir(parents=True, exist_ok=True)
        for path in layout.etc.iterdir():
            os.chmod(path, 0o644)

    def _daemon_env(self) -> dict[str, str]:
        return {
            "PATH": self._path(),
            "LANG": "C.UTF-8",
            "SLURM_CONF": str(self.layout.slurm_conf),
        }

    def _start_munged(self, state: SandboxState) -> None:
        layout = self.layout
        munge = pwd.getpwnam("munge")
        os.chown(layout.munge_dir, munge.pw_uid, munge.pw_gid)
        os.chmod(layout.munge_dir, 0o755)  # clients (the job user too) must reach the socket
        command = [
            "/usr/sbin/munged",
            "--foreground",
            f"--socket={layout.munge_socket}",
            f"--pid-file={layout.munge_dir}/munged.pid",
            f"--log-file={layout.munge_dir}/munged.log",
            f"--seed-file={layout.munge_dir}/munged.seed",
            f"--key-file={MUNGE_KEY}",
        ]
        ref = procs.spawn(command, layout.log / "munged.out", self._daemon_env(), user="munge")
        state.record_proc("munged", ref.to_json())
        _wait_for(
            lambda: layout.munge_socket.exists() and _munge_works(layout.munge_socket),
            10,
            lambda: (
                "munged did not start:"
                + _tail(layout.munge_dir / "munged.log")
                + _tail(layout.log / "munged.out")
            ),
            ref,
        )

    def _setup_network(self, state: SandboxState, names: list[str], bridge_mtu: int) -> None:
        layout = self.layout
        state.add_to("links", layout.control_bridge)
        net.add_bridge(layout.control_bridge, 1500, layout.bridge_mac(1), f"{layout.host_address}/24")
        state.add_to("links", layout.fabric_bridge)
        net.add_bridge(layout.fabric_bridge, bridge_mtu, layout.bridge_mac(2))
        for index, node in enumerate(names, start=1):
            netns = layout.netns(node)
            state.add_to("netns", netns)
            net.setup_node_network(
                netns=netns,
                control_veth=layout.control_veth(index),
                control_bridge=layout.control_bridge,
                address=f"{layout.node_address(index)}/24",
                fabric_veth=layout.fabric_veth(index),
                fabric_bridge=layout.fabric_bridge,
                guest_bridge=layout.guest_bridge,
                guest_bridge_mac=layout.bridge_mac(3, index),
                guest_bridge_address=layout.guest_host_address(index),
                mtu=bridge_mtu,
            )

    def _start_slurmctld(self, state: SandboxState) -> None:
        layout = self.layout
        command = [
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            layout.ctld_hostname,
            "/usr/sbin/slurmctld",
            "-D",
            "-f",
            str(layout.slurm_conf),
        ]
        ref = procs.spawn(command, layout.log / "slurmctld.out", self._daemon_env())
        state.record_proc("slurmctld", ref.to_json())
        _wait_for(
            lambda: self._slurm("scontrol", "ping", check=False).stdout.find("UP") >= 0,
            20,
            lambda: (
                f"slurmctld did not answer: {_tail(layout.log / 'slurmctld.log')}"
                f"{_tail(layout.log / 'slurmctld.out')}"
            ),
            ref,
        )

    def _start_slurmd(self, state: SandboxState, node: str) -> None:
        layout = self.layout
        command = [
            "nsenter",
            f"--net={net.NETNS_DIR}/{layout.netns(node)}",
            "unshare",
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            node,
            "/usr/sbin/slurmd",
            "-D",
            "-N",
            node,
            "-f",
            str(layout.slurm_conf),
        ]
        ref = procs.spawn(command, layout.log / f"slurmd-{node}.out", self._daemon_env())
        state.record_proc(f"slurmd-{node}", ref.to_json())

    def _start_libvirtds(
        self, state: SandboxState, names: list[str], errors: list[str]
    ) -> list[threading.Thread]:
        """Start every node's private libvirtd in parallel threads (each takes ~1 s)."""
        try:
            from .libvirtd import PrivateLibvirtd
        except ImportError as exc:
            raise HostError(f"cannot import the private libvirtd launcher: {exc}") from None
        state.set("libvirtds", names)
        threads = []
        for node in names:
            daemon = PrivateLibvirtd(node, self.layout.libvirt_dir, netns=self.layout.netns(node))

            def start(daemon: PrivateLibvirtd = daemon) -> None:
                try:
                    daemon.start()
                except Exception as exc:  # reported by up() after every thread ended
                    errors.append(str(exc))

            thread = threading.Thread(target=start, name=f"libvirtd-{node}")
            thread.start()
            threads.append(thread)
        return threads

    def _wait_nodes_idle(self, names: list[str], timeout: float) -> None:
        def all_idle() -> bool:
            states = self.node_states()
            return len(states) == len(names) and all(s.startswith("idle") for s in states.values())

        failed = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all_idle():
                return
            for node in names:
                ref = ProcRef.from_json(self.state().data["procs"][f"slurmd-{node}"])
                if not procs.alive(ref):
                    failed = node
                    break
            if failed:
                break
            time.sleep(0.1)
        detail = _tail(self.layout.log / f"slurmd-{failed}.log") if failed else str(self.node_states())
        what = f"slurmd on {failed} exited" if failed else f"nodes not idle after {timeout:.0f} s"
        raise SlurmError(f"sandbox {self.layout.name}: {what}: {detail}")

    # -- queries --------------------------------------------------------------------------------
    def _slurm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = self.client_env()
        result = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=30)
        if check and result.returncode != 0:
            raise SlurmError(f"`{' '.join(args)}` failed: {result.stderr.strip()}")
        return result

    def node_states(self) -> dict[str, str]:
        """node -> Slurm state (``idle``, ``alloc``, ``down*``, ...); empty when slurmctld is down."""
        if not self.layout.slurm_conf.exists():
            return {}
        try:
            result = self._slurm("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        except subprocess.TimeoutExpired:
            return {}
        if result.returncode != 0:
            return {}
        states = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def status(self) -> dict:
        """Daemons (pid, alive), node states, bridges, libvirtd sockets and warnings, as a dict."""
        layout = self.layout
        data = self.state().data
        daemons = {}
        for role, ref in sorted(data.get("procs", {}).items()):
            proc = ProcRef.from_json(ref)
            daemons[role] = {"pid": proc.pid, "alive": procs.alive(proc)}
        if data.get("libvirtds"):
            from .libvirtd import PrivateLibvirtd

            for node in data["libvirtds"]:
                daemon = PrivateLibvirtd(node, layout.libvirt_dir, netns=layout.netns(node))
                # Its socket path must be what the node's site config names (layout.libvirt_uri).
                daemons[f"libvirtd-{node}"] = {"socket": str(daemon.socket_path), "alive": daemon.running}
        names = data.get("nodes", [])
        links = net.link_summary([layout.control_bridge, layout.fabric_bridge])
        for node in names:
            if net.netns_exists(layout.netns(node)):
                inner = net.link_summary([layout.guest_bridge, "eth0"], netns=layout.netns(node))
                links[f"{node}:{layout.guest_bridge}"] = inner[layout.guest_bridge]
        images = {}
        for image, spec in catalog_images(GUEST_OUT).items():
            files = [str(spec[key]) for key in ("kernel", "initrd", "disk") if key in spec]
            images[image] = {"files": files, "present": all(os.path.exists(f) for f in files)}
        return {
            "name": layout.name,
            "base": str(layout.base),
            "up": self.is_up(),
            "complete": bool(data.get("complete")),
            "nodes": self.node_states() if names else {},
            "daemons": daemons,
            "links": links,
            "netns": net.netns_list(layout.netns_prefix),
            "images": images,
            "warnings": data.get("warnings", []),
            "slurm_conf": str(layout.slurm_conf),
            "control_subnet": str(layout.control_subnet),
            "guest_subnet": layout.guest_subnet,
        }

    # -- exec -----------------------------------------------------------------------------------
    def exec_argv(
        self,
        argv: Sequence[str],
        user: Optional[str] = None,
        cwd: Optional[str] = None,
        capture: bool = False,
        timeout: Optional[float] = None,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` against the sandbox as ``user`` (default: the sandbox's job user).

        The working directory is ``cwd``, else the current directory when ``user`` can write it (sbatch
        writes the job's output there), else the user's home.
        """
        if not argv:
            raise UsageError("nothing to run: give a command after --")
        if not self.layout.slurm_conf.exists():
            raise UsageError(f"sandbox {self.layout.name!r} is not up: run `slurm-vc sandbox up` first")
        name = user or self.user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise UsageError(f"no such user {name!r}") from None
        env = self.client_env(name)
        if cwd is None:
            here = os.getcwd()
            cwd = here if _writable_by(here, entry) else entry.pw_dir
        kwargs: dict = {}
        if entry.pw_uid != os.geteuid() and os.geteuid() != 0:
            raise UsageError(f"running as {name} needs root (or run as yourself with --user {_whoami()})")
        if entry.pw_uid != os.geteuid():
            kwargs = {
                "user": entry.pw_uid,
                "group": entry.pw_gid,
                "extra_groups": os.getgrouplist(name, entry.pw_gid),
            }
        try:
            return subprocess.run(
                list(argv),
                env=env,
                cwd=cwd,
                capture_output=capture,
                text=True,
                timeout=timeout,
                **kwargs,
            )
        except (FileNotFoundError, PermissionError) as exc:
            raise UsageError(
                f"cannot run {argv[0]!r} as {name}: {exc.strerror} (searched PATH={env.get('PATH', '')});"
                " options of sandbox exec go before the --"
            ) from None

    def _job_ids(self) -> list[str]:
        try:
            result = self._slurm("squeue", "-h", "-o", "%i", check=False)
        except subprocess.TimeoutExpired:
            return []
        return result.stdout.split() if result.returncode == 0 else []

    def _cancel_all_jobs(self, timeout: float) -> None:
        """scancel every job and wait (bounded) until none is left, epilogs included."""
        jobs = self._job_ids()
        if not jobs:
            return
        self._say(f"cancelling {len(jobs)} job(s)")
        self._slurm("scancel", *jobs, check=False)
        deadline = time.monotonic() + timeout
        while self._job_ids() and time.monotonic() < deadline:
            time.sleep(0.2)

    def _gc_nodes(self, names: list[str]) -> None:
        """Run ``slurm-vc gc`` for every node whose state dir holds a job's leftovers (in its namespace)."""
        threads = []
        for node in names:
            if not _has_job_state(self.layout.node_state_dir(node), self.layout.node_runtime_dir(node)):
                continue
            env = {**self._daemon_env(), "SLURM_VC_CONFIG": str(self.layout.node_config(node))}
            env["SLURMD_NODENAME"] = node
            command = [
                "nsenter",
                f"--net={net.NETNS_DIR}/{self.layout.netns(node)}",
                f"{venv_bin()}/slurm-vc",
                "gc",
                "--node",
                node,
                "--min-age",
                "0",
            ]

            def gc(command: list[str] = command, env: dict = env, node: str = node) -> None:
                try:
                    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    self._say(f"warning: gc on {node}: {exc}")
                    return
                if result.returncode != 0:
                    self._say(f"warning: gc on {node} failed: {result.stderr.strip()[-300:]}")

            thread = threading.Thread(target=gc)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()

    def _release_hugepages(self, node: str) -> None:
        """Release every hugepage ledger left in ``node``'s runtime dir (slurm_vc.hugepages)."""
        ledger_dir = self.layout.node_runtime_dir(node) / LEDGER_SUBDIR
        if not _has_ledgers(ledger_dir):
            return
        try:
            from ..hugepages import HugepagePool

            # Not from the node's config file: an interrupted down may have removed it already.
            pool = HugepagePool(str(self.layout.node_state_dir(node)), ledger_dir=str(ledger_dir))
            for ledger in pool.list_ledgers():
                self._say(f"releasing hugepages of job {ledger.job_id} on {node}")
                pool.release(ledger.job_id)
        except Exception as exc:  # down must go on; report what is left
            self._say(f"warning: cannot release hugepages on {node}: {exc}")

    # -- down -----------------------------------------------------------------------------------
    def down(self, keep_logs: bool = True) -> None:
        """Remove everything the sandbox made; idempotent, and works from a partial or lost state."""
        _require_root()
        with self._locked():
            self._down_locked(keep_logs)

    def _locked(self):
        """An exclusive flock on the sandbox's lock file: one up/down of a sandbox at a time."""
        return _FileLock(self.layout.lock_file)

    def _down_locked(self, keep_logs: bool) -> None:
        layout = self.layout
        state = SandboxState.load(layout.state_file)
        data = state.data
        recorded = {role: ProcRef.from_json(ref) for role, ref in data.get("procs", {}).items()}
        netns_names = sorted(set(data.get("netns", [])) | set(net.netns_list(layout.netns_prefix)))

        # 1. Jobs still there: cancel them so their epilogs tear their guests down the normal way,
        #    then let `slurm-vc gc` reap what is left on each node while Slurm can still say that
        #    no job is live.  Skipped (fast) when no job ever ran or slurmctld is gone.
        ctld = recorded.get("slurmctld")
        if ctld is not None and procs.alive(ctld):
            self._cancel_all_jobs(timeout=10)
            self._gc_nodes(list(data.get("nodes", [])))

        # 2. No new jobs, prologs or epilogs: stop slurmd and slurmctld.
        slurm_daemons = [ref for role, ref in recorded.items() if role.startswith(("slurmd-", "slurmctld"))]
        procs.stop(slurm_daemons, timeout=5)

        # 3. The guests: each libvirtd destroys its domains, then stops (and kills leftover QEMU).
        libvirt_nodes = set(data.get("libvirtds", []))
        if layout.libvirt_dir.exists():
            libvirt_nodes |= {p.name for p in layout.libvirt_dir.iterdir() if p.is_dir()}
        if libvirt_nodes:
            from .libvirtd import PrivateLibvirtd

            threads = []
            for node in sorted(libvirt_nodes):
                daemon = PrivateLibvirtd(node, layout.libvirt_dir, netns=layout.netns(node))
                thread = threading.Thread(target=_quietly, args=(daemon.stop,))
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()

        _crash_point("down-libvirt")

        # 4. Whatever still runs in a node namespace (slurmstepd, job tasks, prolog helpers).
        for netns in netns_names:
            procs.stop(procs.pids_in_netns(f"{net.NETNS_DIR}/{netns}"), timeout=3)

        # 5. Daemons found by their arguments (a lost state.json): slurmctld, slurmd, munged.
        procs.stop(procs.pids_with_arg(str(layout.base) + "/", DAEMON_COMMS), timeout=5)
        procs.stop(list(recorded.values()), timeout=5)

        # 6. Namespaces, then host links (veth host ends vanish with their namespace).
        for netns in netns_names:
            net.delete_netns(netns)
        for link in sorted(set(data.get("links", [])) | set(net.host_links(layout.link_prefix))):
            net.delete_link(link)

        # 7. Hugepages still reserved by a job (the epilog or gc normally released them): release
        #    exactly what each node's ledgers say, now that no guest uses them.  Never a blunt reset
        #    of nr_hugepages: other sandboxes and tests on this machine grow the same pools.
        node_names_seen = set(data.get("nodes", []))
        for folder in (layout.base / "nodes", layout.run_base):
            if folder.is_dir():
                node_names_seen |= {p.name for p in folder.iterdir() if p.is_dir()}
        for node in sorted(node_names_seen):
            self._release_hugepages(node)

        # 8. Files: the runtime dir (it would go at the next boot), then everything but the logs
        #    (kept for a post-mortem unless asked).
        shutil.rmtree(layout.run_base, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(layout.base, ignore_errors=True)
            # nothing is left to guard; a later up of this name makes the lock file again
            layout.lock_file.unlink(missing_ok=True)
        if layout.base.exists():
            for entry in layout.base.iterdir():
                if keep_logs and entry.name == "log":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def free_name(prefix: str, root: str = DEFAULT_ROOT, seed: Optional[int] = None) -> str:
    """A sandbox name ``<prefix><digits>`` whose subnet and slurmctld port nothing on this machine uses.

    For tests and benchmarks that run next to other sandboxes: names derive subnets from a hash with
    50 values, so a fixed name can collide with a sandbox someone else has up.
    """
    width = 8 - len(prefix)
    if width < 1:
        raise UsageError(f"prefix {prefix!r} leaves no room for digits in an 8-character name")
    taken = set()
    root_dir = Path(root)
    if root_dir.is_dir():
        for entry in root_dir.iterdir():
            state = SandboxState.load(entry / "state.json").data
            if state.get("octet") and state.get("procs"):
                taken.add(int(state["octet"]))
    used = [ipaddress.IPv4Interface(address) for _, address in net.addresses_in_use()]
    start = os.getpid() if seed is None else seed
    for step in range(500):
        name = f"{prefix}{(start + step) % 10**width}"
        layout = layout_for(name, root)
        if layout.octet in taken or any(a.ip in layout.sandbox_net for a in used):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("0.0.0.0", layout.ctld_port))
            except OSError:
                continue
        return name
    raise HostError(f"no free sandbox subnet for prefix {prefix!r}: too many sandboxes are up")


# -- helpers used above (module level so tests can reach them) ---------------------------------------
class _FileLock:
    """``with _FileLock(path):`` holds an exclusive flock (released when the process dies, too)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1

    def __enter__(self) -> _FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _has_job_state(state_dir: Path, runtime_dir: Path) -> bool:
    """Does a node's slurm-vc state or runtime dir hold anything of a job (state, published env, a
    hugepage ledger)?"""
    for sub in ("jobs", "jobenv"):
        folder = state_dir / sub
        if folder.is_dir() and any(folder.iterdir()):
            return True
    return _has_ledgers(runtime_dir / LEDGER_SUBDIR)


def _has_ledgers(ledger_dir: Path) -> bool:
    try:
        return any(parse_ledger_name(name) for name in os.listdir(ledger_dir))
    except OSError:
        return False


def _whoami() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _quietly(function) -> None:
    try:
        function()
    except Exception as exc:  # down must go on; the next down retries
        _log(f"warning: {exc}")


CRASH_ENV = "SLURM_VC_SANDBOX_CRASH_AFTER"


def _crash_point(step: str) -> None:
    """Simulate an interrupted ``up`` (SIGKILL, no cleanup) after ``step``: for tests, via CRASH_ENV."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("the sandbox needs root (namespaces, bridges, daemons)")


def _require_tools() -> None:
    missing = [
        tool
        for tool in ("ip", "nsenter", "unshare", "useradd")
        if shutil.which(tool, path=SYSTEM_PATH) is None
    ]
    missing += [
        path
        for path in ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")
        if not os.path.exists(path)
    ]
    if not os.path.exists(MUNGE_KEY):
        missing.append(MUNGE_KEY)
    if missing:
        raise HostError(f"missing: {', '.join(missing)} (run scripts/install-deps.sh)")


def ensure_user(name: str) -> bool:
    """Create the unprivileged job user (with a home directory) if missing.  True when created."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name],
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH},
    )
    if result.returncode != 0:
        raise HostError(f"cannot create user {name}: {result.stderr.strip()}")
    return True


HOOK_DIRS = ("prolog", "epilog", "libexec", "bin")


def hook_role(filename: str) -> Optional[str]:
    """Which Slurm hook an executable's file name is: prolog, task-prolog, epilog, exec, or None."""
    if "task" in filename and "prolog" in filename:
        return "task-prolog"
    if "prolog" in filename:
        return "prolog"
    if "epilog" in filename:
        return "epilog"
    if filename.endswith("exec"):
        return "exec"  # the SPANK task wrapper (slurm-vc-exec)
    return None


def find_hook_executables(repo: Path) -> dict[str, str]:
    """role -> executable in the working tree (prolog/, epilog/, libexec/, bin/), chosen by file name."""
    found: dict[str, str] = {}
    for directory in HOOK_DIRS:
        folder = repo / directory
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            role = hook_role(path.name)
            if role and path.is_file() and os.access(path, os.X_OK):
                found.setdefault(role, str(path))
    return found


SYSTEM_PYTHON = "/usr/bin/python3"


def _try_as(entry: pwd.struct_passwd, argv: list[str], env: dict[str, str]) -> Optional[str]:
    """Run ``argv`` as the user ``entry``; None when it succeeds, else why not."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": SYSTEM_PATH, "HOME": entry.pw_dir, **env},
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    if result.returncode == 0:
        return None
    return (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]


def pick_python(user: str) -> tuple[str, list[str], list[str]]:
    """(python, PYTHONPATH entries, warnings) for running slurm-vc as the job user.

    This venv's Python when the user can run it (a fresh Debian machine: the venv is made from
    /usr/bin/python3).  A venv made from a Python under /root (pyenv) is unusable for anyone else:
    then the system Python of the same version runs slurm_vc from the working tree with the venv's
    site-packages (compiled wheels are per minor version, so they load).  Else a warning.
    """
    check = [sys.executable, "-c", "import slurm_vc.cli, slurm_vc.config"]
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return sys.executable, [], [f"job user {user!r} does not exist"]
    why = _try_as(entry, check, {})
    if why is None:
        return sys.executable, [], []
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    pythonpath = [str(REPO), *site]
    same_version = f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"
    fallback = [SYSTEM_PYTHON, "-c", same_version + "; import slurm_vc.cli, slurm_vc.config"]
    if (
        os.path.exists(SYSTEM_PYTHON)
        and _try_as(entry, fallback, {"PYTHONPATH": ":".join(pythonpath)}) is None
    ):
        return SYSTEM_PYTHON, pythonpath, []
    return (
        sys.executable,
        [],
        [
            f"job user {user} cannot run {sys.executable} ({why}): `slurm-vc` inside jobs and the --vcluster"
            " validator at submit will fail for that user; build the venv from a Python every user can run"
            " (e.g. PYTHON=/usr/bin/python3 scripts/install-deps.sh)"
        ],
    )


def build_spank_plugin(repo: Path) -> tuple[Optional[str], Optional[str]]:
    """Build the SPANK plugin with ``make -C spank``; (path of the .so, None) or (None, why not)."""
    spank = repo / "spank"
    if not (spank / "Makefile").exists():
        return None, f"no {spank}/Makefile: SPANK plugin (--vcluster) not installed"
    result = subprocess.run(
        ["make", "-s", "-C", str(spank)], capture_output=True, text=True, env={"PATH": SYSTEM_PATH}
    )
    if result.returncode != 0:
        return None, f"make -C {spank} failed: {(result.stderr or result.stdout).strip()[-500:]}"
    built = sorted(spank.glob("*.so"))
    if not built:
        return None, f"make -C {spank} produced no .so"
    return str(built[0]), None


def spank_args(layout: SandboxLayout, validator: str, wrapper: Optional[str]) -> list[str]:
    """plugstack.conf arguments: the validator and its config, and the task wrapper (or wrap=0)."""
    args = [f"validator={validator}", f"config={layout.login_config}"]
    args.append(f"wrapper={wrapper}" if wrapper else "wrap=0")
    return args


def catalog_images(out_dir: Path) -> dict[str, dict]:
    """The sandbox catalog: the tiny test guest as ``tiny``, and as ``centos7-hpc`` for the README
    example; the benchmark's null guest as ``null``."""
    tiny = {
        "description": "tiny busybox test guest (guest/build-tiny-guest.sh)",
        "kernel": str(out_dir / "vmlinuz"),
        "initrd": str(out_dir / "initrd.img"),
        # the console log is what `slurm-vc console` and readiness-timeout errors show
        "cmdline": "console=ttyS0 loglevel=4",
        "seed": "both",
        "readiness": {"probe": "serial"},
        "default_memory": "256M",
    }
    hpc = dict(tiny, description="stand-in for CentOS 7 HPC: the tiny test guest")
    # The time-to-cluster benchmark's guest with nothing to boot (guest/build-null-guest.py): the
    # same control-plane work as tiny (seed ISO and command line, hugepages, libvirt, serial probe)
    # on a smaller RAM, so QEMU's preallocation adds less noise.
    null = dict(
        tiny,
        description="benchmark guest: prints the ready line and halts (no network, not for jobs)",
        kernel=str(out_dir / "null-guest.bin"),
        cmdline="",
        default_memory="32M",
    )
    del null["initrd"]
    return {"tiny": tiny, "centos7-hpc": hpc, "null": null}


def _writable_by(path: str, entry: pwd.struct_passwd) -> bool:
    """Can the user ``entry`` create files in directory ``path`` (mode bits only)?"""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if entry.pw_uid == 0:
        return True
    if st.st_uid == entry.pw_uid:
        return bool(st.st_mode & 0o200)
    if st.st_gid in os.getgrouplist(entry.pw_name, entry.pw_gid):
        return bool(st.st_mode & 0o020)
    return bool(st.st_mode & 0o002)


def _munge_works(socket_path: Path) -> bool:
    encoded = subprocess.run(["munge", "-n", "-S", str(socket_path)], capture_output=True)
    if encoded.returncode != 0:
        return False
    decoded = subprocess.run(["unmunge", "-S", str(socket_path)], input=encoded.stdout, capture_output=True)
    return decoded.returncode == 0


def _wait_for(predicate, timeout: float, describe, ref: Optional[ProcRef] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if ref is not None and not procs.alive(ref):
            break
        time.sleep(0.05)
    raise HostError(describe())


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n  " + "\n  ".join(text) if text else ""


def _total_memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096
