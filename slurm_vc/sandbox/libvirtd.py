"""A private libvirtd (plus virtlogd) for one simulated node or one test session.

The daemons run in a private mount namespace (``unshare -m --propagation private``), optionally inside a
network namespace (``nsenter --net=/run/netns/NAME``), with private directories bind-mounted over
``/run/libvirt``, ``/var/lib/libvirt``, ``/var/cache/libvirt`` and ``/var/log/libvirt``, so several can
run on one machine next to each other and next to (never instead of) a system libvirtd.

Process layout::

    supervisor (python -m slurm_vc.sandbox.libvirtd supervise DIR)   <- child subreaper, setsid
      |- virtlogd -f DIR/etc/virtlogd.conf -p DIR/run/virtlogd.pid
      |- libvirtd -f DIR/etc/libvirtd.conf -p DIR/run/libvirtd.pid
      `- qemu-system-x86_64 ...  (daemonized by libvirtd, re-parented here, reaped at once)

The supervisor is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``) that reaps at once: libvirt
waits for a destroyed QEMU to vanish from /proc, and a PID 1 that reaps only every 1-2 s makes every
destroy take ~1.4 s instead of ~0.2 s.

hugetlbfs is mounted inside the namespace (2M, and 1G when the kernel has 1G pages) *before* libvirtd
starts, because libvirtd looks for hugetlbfs mounts only at start-up.  The mount points live under the
private directory, so nothing is created on the host outside ``base_dir`` (except an empty
``/run/libvirt`` mount point if the host had none).

Clients connect with ``qemu+unix:///system?socket=<dir>/run/libvirt-sock`` (``PrivateLibvirtd.uri``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import HostError

# Directories bind-mounted over the system paths inside the private mount namespace.
PRIVATE_DIRS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
HUGEPAGE_SIZES = {"2M": "hugepages-2048kB", "1G": "hugepages-1048576kB"}
PR_SET_CHILD_SUBREAPER = 36
START_TIMEOUT = 60.0
_WAITED_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
STOP_TIMEOUT = 20.0

LIBVIRTD_CONF = """\
# Written by slurm_vc.sandbox.libvirtd for a private daemon; clients are root on the local socket.
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:{log}"
"""
VIRTLOGD_CONF = """\
log_outputs = "3:file:{log}"
"""


class PrivateLibvirtd:
    """One private libvirtd + virtlogd pair, owned by the process that calls :meth:`start`.

    ``name`` must be unique among daemons sharing ``base_dir``; everything lives in ``base_dir/name``.
    ``stop`` is idempotent and also cleans up after a supervisor that died.
    """

    def __init__(
        self, name: str, base_dir: str | os.PathLike, netns: Optional[str] = None, warm: bool = True
    ):
        self.name = name
        self.base_dir = Path(base_dir).absolute()
        self.dir = self.base_dir / name
        self.netns = netns
        # Probe QEMU's capabilities during start() (cached for the daemons sharing base_dir), so
        # the first guest does not pay ~1.5 s for it.
        self.warm = warm

    # -- paths ---------------------------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        """The read-write libvirtd socket (as seen from the host)."""
        return self.dir / "run" / "libvirt-sock"

    @property
    def qemu_log_dir(self) -> Path:
        """Where this daemon writes its guests' QEMU logs, as seen from the host (its
        /var/log/libvirt/qemu inside the private mount namespace)."""
        return self.dir / "log" / "qemu"

    @property
    def uri(self) -> str:
        """The libvirt URI clients use to reach this daemon."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def hugepage_mounts(self) -> dict[str, str]:
        """Page size ("2M"/"1G") -> hugetlbfs mount point inside the daemon's mount namespace."""
        state = self._read_state()
        return dict(state.get("hugepage_mounts", {})) if state else {}

    @property
    def libvirtd_log(self) -> Path:
        return self.dir / "logs" / "libvirtd.log"

    @property
    def supervisor_log(self) -> Path:
        return self.dir / "logs" / "supervisor.log"

    def _state_path(self) -> Path:
        return self.dir / "supervisor.json"

    def _read_state(self) -> Optional[dict]:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return None

    # -- lifecycle -----------------------------------------------------------------------------
    @staticmethod
    def _supervisor_alive(state: Optional[dict]) -> bool:
        return bool(state) and _pid_alive(state.get("supervisor_pid", 0), state.get("supervisor_start"))

    @property
    def running(self) -> bool:
        """True when the supervisor and libvirtd are alive and libvirtd's socket exists."""
        state = self._read_state()
        if not state or not _pid_alive(state.get("supervisor_pid", 0), state.get("supervisor_start")):
            return False
        if state.get("ready") and not _pid_alive(state.get("libvirtd_pid", 0)):
            return False  # libvirtd died (the supervisor stays to reap its guests)
        return self.socket_path.exists()

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the daemons (if not running) and return the URI.  Raises HostError on failure."""
        if self.running:
            return self.uri
        state = self._read_state()
        if self._supervisor_alive(state) and state.get("ready"):
            # libvirtd died under a live supervisor: restart just libvirtd, guests keep running.
            self.restart_libvirtd(timeout)
            return self.uri
        if self.netns and not os.path.exists(f"/run/netns/{self.netns}"):
            raise HostError(f"network namespace {self.netns!r} does not exist (/run/netns/{self.netns})")
        self.stop()  # leftovers of an earlier, crashed instance
        for sub in ("logs", "etc", *PRIVATE_DIRS):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _copy_new_files(self._shared_caps_dir, self._private_caps_dir)
        (self.dir / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(log=self.libvirtd_log))
        (self.dir / "etc" / "virtlogd.conf").write_text(
            VIRTLOGD_CONF.format(log=self.dir / "logs" / "virtlogd.log")
        )
        # QEMU runs as libvirt-qemu on Debian and must reach the hugetlbfs mounts below self.dir.
        os.chmod(self.dir, 0o755)
        try:
            _check_traversable(self.dir)
        except HostError:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

        command = [sys.executable, "-m", "slurm_vc.sandbox.libvirtd", "supervise", str(self.dir)]
        command = ["unshare", "--mount", "--propagation", "private", "--", *command]
        if self.netns:
            command = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *command]
        env = dict(os.environ)
        # The supervisor imports this package; make sure it finds the same copy we run from.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.supervisor_log, "ab") as log:
            # setsid + closed stdio: the daemons must outlive a prolog or `sandbox up` that started them.
            subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=env,
                close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._read_state()
            if state and state.get("error"):
                self.stop()
                raise HostError(f"private libvirtd {self.name!r} failed to start: {state['error']}")
            if state and state.get("ready") and self.socket_path.exists():
                if self.warm:
                    self._warm_up()
                return self.uri
            if state and not _pid_alive(state["supervisor_pid"], state.get("supervisor_start")):
                break
            time.sleep(0.05)
        tail = _tail(self.supervisor_log) + _tail(self.libvirtd_log)
        self.stop()
        raise HostError(f"private libvirtd {self.name!r} did not come up within {timeout:.0f} s:\n{tail}")

    @property
    def _shared_caps_dir(self) -> Path:
        return self.base_dir / ".qemu-capabilities"

    @property
    def _private_caps_dir(self) -> Path:
        return self.dir / "cache" / "qemu" / "capabilities"

    def _warm_up(self) -> None:
        """Have libvirtd probe QEMU and the host now, and share QEMU's capabilities cache with later
        daemons.

        libvirt re-validates a cache entry (QEMU and libvirtd binaries, kernel, CPU microcode) and
        re-probes when it is stale, so a shared entry can never be wrong, only useless.
        """
        try:
            import libvirt

            libvirt.registerErrorHandler(lambda *_: None, None)
            conn = libvirt.open(self.uri)
            try:
                conn.getDomainCapabilities(None, None, None, "qemu", 0)
                # The host capabilities (where the prolog reads QEMU's user) are built at their first
                # request, ~0.9 s here: a long-running node daemon has them long before a job.
                conn.getCapabilities()
            finally:
                conn.close()
        except Exception as exc:  # an optimisation only: the first guest start probes instead
            print(f"private libvirtd {self.name}: warm-up failed: {exc}", file=sys.stderr)
            return
        _copy_new_files(self._private_caps_dir, self._shared_caps_dir)

    def restart_libvirtd(self, timeout: float = START_TIMEOUT) -> None:
        """Restart only libvirtd (as an admin or a package upgrade would); guests keep running."""
        state = self._read_state()
        if not self._supervisor_alive(state):
            raise HostError(f"private libvirtd {self.name!r} is not running (no supervisor)")
        before = state.get("restarts", 0)
        os.kill(state["supervisor_pid"], signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._read_state() or {}
            if state.get("restarts", 0) > before and state.get("ready"):
                if state.get("error"):
                    raise HostError(f"private libvirtd {self.name!r}: {state['error']}")
                return
            time.sleep(0.05)
        raise HostError(f"private libvirtd {self.name!r} did not restart within {timeout:.0f} s")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the daemons and every QEMU they started, then remove the private directory.

        Only processes that belong to this instance are signalled: the supervisor, and processes whose
        PID files are in this instance's private ``run`` directory (checked against their start time
        or command line so a recycled PID is never hit).  Idempotent.
        """
        if not self.dir.exists():
            return
        state = self._read_state() or {}
        pid = state.get("supervisor_pid")
        if pid and _pid_alive(pid, state.get("supervisor_start")):
            # The supervisor destroys the guests through libvirt first (so libvirt removes their
            # cgroups and sockets), then stops libvirtd and virtlogd, and kills any leftover QEMU.
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _pid_alive(pid, state.get("supervisor_start")):
                time.sleep(0.05)
            if _pid_alive(pid, state.get("supervisor_start")):
                os.kill(pid, signal.SIGKILL)
        # Whatever survived a dead supervisor (re-parented to PID 1): find it by its PID files.
        for pidfile in _own_pidfiles(self.dir):
            _kill_pidfile(pidfile)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# helpers shared by both sides


def _proc_start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat (start time in ticks): with the PID it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start_time: Optional[str] = None) -> bool:
    if not pid:
        return False
    current = _proc_start_time(pid)
    if current is None:
        return False
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start_time is None or current == start_time


def _own_pidfiles(root: Path) -> list[Path]:
    run = root / "run"
    files = [run / "libvirtd.pid", run / "virtlogd.pid"]
    files += sorted((run / "qemu").glob("*.pid")) if (run / "qemu").is_dir() else []
    return [f for f in files if f.exists()]


def _kill_pidfile(pidfile: Path) -> None:
    """Kill the process named by a PID file if its command line is a libvirt daemon or QEMU."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, ValueError):
        return
    if not any(word in os.path.basename(cmdline) for word in (b"libvirtd", b"virtlogd", b"qemu")):
        return
    if pidfile.parent.name == "qemu":
        # A QEMU pid file: check the guest name too, so a recycled PID is left alone.
        args = Path(f"/proc/{pid}/cmdline").read_bytes()
        if f"guest={pidfile.stem},".encode() not in args and f"guest={pidfile.stem}\0".encode() not in args:
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _copy_new_files(source: Path, target: Path) -> None:
    """Copy files from ``source`` that ``target`` lacks (atomically each; both may be missing)."""
    try:
        names = [p.name for p in source.iterdir() if p.is_file()]
    except OSError:
        return
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not (target / name).exists():
                # A unique temporary name: daemons may be started from several threads at once.
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target)
                os.close(fd)
                shutil.copy2(source / name, tmp)
                os.replace(tmp, target / name)
    except OSError:
        pass  # a cache: never worth failing a start for


def _check_traversable(path: Path) -> None:
    """Raise HostError unless ``path`` and every directory above it, as written and with symlinks
    resolved, lets other users (QEMU) pass."""
    from ..qemu_access import UNPRIVILEGED, closed_above, closed_directories

    closed = closed_directories([path], UNPRIVILEGED) + closed_above(path, UNPRIVILEGED)
    if closed:
        parent = closed[0]
        raise HostError(
            f"{parent} is not searchable by other users (mode {oct(os.stat(parent).st_mode & 0o777)}):"
            f" QEMU, running as an unprivileged user, could not reach the hugepage mounts under {path};"
            f" use another base directory or 'chmod o+x {parent}'"
        )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# the supervisor (runs inside the private mount namespace)


class _Supervisor:
    def __init__(self, root: Path):
        self.root = root
        self.state_path = root / "supervisor.json"
        self.state: dict = {
            "supervisor_pid": os.getpid(),
            "supervisor_start": _proc_start_time(os.getpid()),
            "ready": False,
        }
        self.children: dict[str, subprocess.Popen] = {}
        self.stopping = False

    def write_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_path)

    def run(self) -> int:
        self.write_state()
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
            self._mount_private_dirs()
            self.state["hugepage_mounts"] = self._mount_hugetlbfs()
            self._ensure_cgroups()
            self._start_daemons()
        except Exception as exc:  # reported to the parent through the state file
            self.state["error"] = f"{type(exc).__name__}: {exc}"
            self.write_state()
            self._shutdown()
            return 1
        self.state["ready"] = True
        self.write_state()
        # From here on signals are taken synchronously: no handler can interrupt a half-done reap,
        # and SIGCHLD wakes us the moment a QEMU dies so libvirt sees it gone at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED_SIGNALS)
        while not self.stopping:
            info = signal.sigtimedwait(_WAITED_SIGNALS, 1.0)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            self._reap_all()
            if info is not None and info.si_signo == signal.SIGUSR1:
                self._restart_libvirtd()
        self._shutdown()
        return 0

    def _on_term(self, signum, frame) -> None:
        self.stopping = True

    # -- namespace setup ------------------------------------------------------------------
    def _mount(self, *args: str) -> None:
        result = subprocess.run(["mount", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {result.stderr.strip()}")

    def _mount_private_dirs(self) -> None:
        for sub, target in PRIVATE_DIRS.items():
            os.makedirs(target, exist_ok=True)
            self._mount("--bind", str(self.root / sub), target)

    def _mount_hugetlbfs(self) -> dict[str, str]:
        mounts = {}
        for size, sysfs_name in HUGEPAGE_SIZES.items():
            if not os.path.isdir(f"/sys/kernel/mm/hugepages/{sysfs_name}"):
                continue
            point = self.root / f"hugepages-{size}"
            point.mkdir(exist_ok=True)
            self._mount("-t", "hugetlbfs", "-o", f"pagesize={size},mode=0775", "hugetlbfs", str(point))
            mounts[size] = str(point)
        return mounts

    def _ensure_cgroups(self) -> None:
        """Re-mount the cgroup v1 controllers when /sys was re-mounted without them (ip netns exec)."""
        mounted = Path("/proc/self/mounts").read_text()
        if " cgroup " in mounted or " cgroup2 " in mounted:
            return
        self._mount("-t", "tmpfs", "-o", "mode=755", "cgroup_root", "/sys/fs/cgroup")
        hierarchies: dict[str, list[str]] = {}
        for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
            name, hierarchy, _, enabled = line.split()
            if enabled == "1" and hierarchy != "0":
                hierarchies.setdefault(hierarchy, []).append(name)
        for names in hierarchies.values():
            point = "/sys/fs/cgroup/" + ",".join(names)
            os.makedirs(point, exist_ok=True)
            self._mount("-t", "cgroup", "-o", ",".join(names), "cgroup", point)

    def _start_daemons(self) -> None:
        for name in ("virtlogd", "libvirtd"):
            self._start_daemon(name)

    def _start_daemon(self, name: str) -> None:
        socket = Path("/run/libvirt/virtlogd-sock" if name == "virtlogd" else "/run/libvirt/libvirt-sock")
        socket.unlink(missing_ok=True)  # a stale socket must not pass for a live daemon
        command = [
            shutil.which(name) or f"/usr/sbin/{name}",
            "-f",
            str(self.root / "etc" / f"{name}.conf"),
            "-p",
            str(self.root / "run" / f"{name}.pid"),
        ]
        with open(self.root / "logs" / f"{name}.out", "ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # The supervisor blocks the signals it waits for; the daemons must not inherit that.
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED_SIGNALS),
            )
        self.children[name] = child
        deadline = time.monotonic() + START_TIMEOUT
        while not socket.exists():
            self._reap_all()
            if child.returncode is not None or child.poll() is not None:
                raise RuntimeError(f"{name} exited with status {child.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not create {socket}")
            time.sleep(0.02)
        self.state[f"{name}_pid"] = child.pid

    def _restart_libvirtd(self) -> None:
        """SIGUSR1: restart libvirtd only; running guests stay up and the new daemon re-attaches."""
        print("supervisor: restarting libvirtd", flush=True)
        _terminate(self.children["libvirtd"])
        self.state["ready"] = False
        self.write_state()
        try:
            self._start_daemon("libvirtd")
        except Exception as exc:
            self.state["error"] = f"libvirtd restart failed: {exc}"
        self.state["restarts"] = self.state.get("restarts", 0) + 1
        self.state["ready"] = True
        self.write_state()

    # -- running ----------------------------------------------------------------------------
    def _reap_all(self) -> None:
        """Reap every exited child (daemons or re-parented QEMUs)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for name, child in self.children.items():
                if child.pid == pid:
                    child.returncode = os.waitstatus_to_exitcode(status)
                    if not self.stopping:
                        print(f"supervisor: {name} (pid {pid}) exited ({child.returncode})", flush=True)

    def _shutdown(self) -> None:
        """Destroy guests via libvirt, stop libvirtd, kill leftover QEMUs, stop virtlogd."""
        self.stopping = True
        if self.state.get("ready"):
            # libvirt waits for each destroyed QEMU to be reaped, and we are the reaper: destroy in a
            # thread while this thread keeps reaping.
            worker = threading.Thread(target=self._destroy_domains, daemon=True)
            worker.start()
            deadline = time.monotonic() + STOP_TIMEOUT / 2
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(0.02)
                self._reap_all()
        for name in ("libvirtd", "virtlogd"):
            child = self.children.get(name)
            if child is None:
                continue
            if name == "virtlogd":
                self._kill_descendants()
            _terminate(child)
        self._kill_descendants()

    def _destroy_domains(self) -> None:
        try:
            import libvirt

            libvirt.registerErrorHandler(lambda *_: None, None)
            conn = libvirt.open(f"qemu+unix:///system?socket={self.root / 'run' / 'libvirt-sock'}")
            try:
                for dom in conn.listAllDomains():
                    try:
                        dom.destroy()
                    except libvirt.libvirtError:
                        pass
            finally:
                conn.close()
        except Exception as exc:  # best effort: _kill_descendants still cleans up
            print(f"supervisor: destroying domains failed: {exc}", flush=True)

    def _kill_descendants(self) -> None:
        """SIGKILL every remaining child other than virtlogd (QEMUs re-parented to us), then reap."""
        keep = {c.pid for n, c in self.children.items() if n == "virtlogd" and c.returncode is None}
        for _ in range(50):
            children = [p for p in _children_of(os.getpid()) if p not in keep]
            if not children:
                return
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            self._reap_all()


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _terminate(child: subprocess.Popen, timeout: float = 10.0) -> None:
    if child.returncode is not None:
        return
    try:
        child.terminate()
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    except ChildProcessError:  # already reaped by the waitpid(-1) loop
        pass


def main(argv: list[str]) -> int:
    """``python -m slurm_vc.sandbox.libvirtd supervise DIR`` (started by PrivateLibvirtd.start)."""
    if len(argv) != 2 or argv[0] != "supervise":
        print("usage: python -m slurm_vc.sandbox.libvirtd supervise DIR", file=sys.stderr)
        return 2
    return _Supervisor(Path(argv[1])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
