#!/usr/bin/env python3
"""Benchmark: time to cluster, sbatch -> job script start, with --vcluster against the same job without
it and against the guests booted by plain QEMU alone; the control-plane overhead per phase.

Goal (issue 5, point 6): the overhead (everything that is not the guest's own boot) under 1 s per node,
not growing with the node count.

One sandbox cluster (``--name``, default ``vcbench``) is brought up once with max(--nodes) nodes.  Each
repetition runs, for every node count n (order rotated between repetitions so machine load drifts
over all alike):

  plain   ``sbatch -N n job.sh``                     the job script prints ``SCRIPT_START <epoch>``
  vc      ``sbatch -N n --vcluster=IMAGE job.sh``    same script; the prolog boots a guest per node
  qemu    the same n guests booted by QEMU alone, all at once: libvirt's own QEMU argv of each vc
          guest (read from /proc while the job ran) made runnable without libvirt
          (standalone_argv), started in cpu and cpuset cgroups on the guest's pinned CPUs, its
          hugepages as cold as the vc guest's (SETTLE_SECONDS); launch -> the slowest guest's ready
          line.  ``--baseline minimal`` boots the lighter machine of earlier runs instead.

Overhead = (vc script start - plain script start) - plain-QEMU boot, from medians (also with each
job's wait for Slurm's once-a-second scheduler left out).  Per phase, from
the vc job's timeline (slurm_vc.timeline, collected by slurm_vc.jobwatch): sbatch -> queued (the
SPANK plugin's submit-time validation), queued -> allocated, allocated -> prolog start (hook + Python
start-up + Slurm facts), prolog start -> guest started (plan, isolation, hugepages, seed, libvirt
define+start), guest boot (started -> ready, compared with plain QEMU), last ready -> script start
(DeferBatch release, batch launch, TaskProlog), and script end -> teardown done.

IMAGE (``--image``) is ``tiny``, the busybox Linux test guest (5-10 s to boot under TCG, and seconds of
difference from one boot to the next), or ``null``, a guest with nothing to boot
(guest/build-null-guest.py: it prints the ready line on its serial port as soon as QEMU's firmware
has loaded it).  The control plane does the same work for both (seed, hugepages, libvirt, serial
probe, TaskProlog); with ``null`` what remains of "the guest's own boot" is QEMU and its firmware,
~0.1 s, so the overhead is no longer a small difference between two large, noisy boot times.

Run as root, with a Python every user can run (the job user runs the validator from this venv)::

    python bench/bench_time_to_cluster.py [--reps 3] [--nodes 1,2,3] [--image tiny|null]
        [--name vcbench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lxml import etree

from slurm_vc import jobwatch, timeline
from slurm_vc.hugepages import HugepagePool
from slurm_vc.sandbox.cluster import Sandbox
from slurm_vc.slurm import TERMINAL_JOB_STATES

REPO = Path(__file__).resolve().parents[1]
READY_TEXT = "SLURM-VC-READY"
# The tiny guest's init logs its own uptime when it signals ready (guest/tiny-init): the guest's boot
# by its own clock, from its kernel's start to the ready line.
GUEST_UPTIME_RE = re.compile(r"ready after ([0-9]+(?:\.[0-9]+)?) s of guest uptime")
JOB_SCRIPT = '#!/bin/sh\necho "SCRIPT_START $(date +%s.%N)"\necho "SCRIPT_END $(date +%s.%N)"\n'
IMAGES = ("tiny", "null")  # the sandbox catalog's test guest, and the null guest (nothing to boot)
GOAL_PER_NODE = 1.0


@dataclass
class JobRun:
    """One measured job."""

    nodes: int
    vcluster: str  # the --vcluster value, "" for the plain job
    job: timeline.JobTimes
    records: dict[str, jobwatch.NodeRecord] = field(default_factory=dict)
    state: str = ""
    qemu_argv: dict[str, list[str]] = field(default_factory=dict)  # domain -> libvirt's QEMU argv
    files: dict[str, str] = field(default_factory=dict)  # per-job file -> a copy that outlives the job
    guest_uptime: dict[str, float] = field(default_factory=dict)  # node -> guest uptime at ready

    @property
    def time_to_cluster(self) -> Optional[float]:
        return timeline.time_to_cluster(self.job)


# ------------------------------------------------------------------------------------------ jobs


class CapturingWatcher(jobwatch.JobWatcher):
    """Also records the argv libvirt gave the job's QEMU processes, and copies each guest's seed image
    (removed at teardown), so the baseline can boot the same virtual machine without libvirt."""

    def __init__(self, state_dirs, job_id, scratch: Path) -> None:
        super().__init__(state_dirs, job_id)
        self.qemu_argv: dict[str, list[str]] = {}  # domain name -> QEMU argv
        self.files: dict[str, str] = {}  # a file the argv names -> our copy of it
        self.guest_uptime: dict[str, float] = {}  # node -> the guest's uptime when it signalled ready
        self.scratch = scratch
        self._next_scan = 0.0

    def poll_once(self) -> None:
        super().poll_once()
        for node, state_dir in self.state_dirs.items():
            if node not in self.guest_uptime and self.records[node].meta.get("ready_at"):
                console = state_dir / "jobs" / self.job_id / "console.log"
                uptime = guest_uptime(jobwatch.read_text(console))
                if uptime is not None:
                    self.guest_uptime[node] = uptime
        now = time.monotonic()
        if now < self._next_scan or len(self.qemu_argv) >= len(self.state_dirs):
            return
        self._next_scan = now + 0.2
        marker = f"guest=vc-{self.job_id}-".encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            names = [a for a in argv if a.startswith(marker)]
            if not names or not argv[0].endswith(b"qemu-system-x86_64"):
                continue
            name = names[0].decode().split(",")[0].split("=", 1)[1]
            if name in self.qemu_argv:
                continue
            text = [a.decode() for a in argv if a]
            for path in job_files(text):
                copy = self.scratch / "files" / name / Path(path).name
                copy.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(path, copy)
                except OSError:
                    continue  # gone already: the baseline for this run then reports it
                self.files[path] = str(copy)
            self.qemu_argv[name] = text


# Memory handed back to the kernel is, on a VM with free page reporting (this project's test VMs),
# returned to the hypervisor about 2 s later, and the first touch of it
# then costs ~0.4-0.6 s per 256 MiB.  A guest's hugepages are touched at start (QEMU preallocates
# them), so whichever of the vc guest and the plain QEMU reuses pages the other freed a moment ago
# would start faster.  Waiting this long after the last release before each measured start gives
# both equally cold pages, as a job on a real node gets after the previous one.
SETTLE_SECONDS = 3.0
SLOW_STATE_POLL = 2.0  # seconds between two questions to Slurm while a job's guests boot


# slurmctld starts a queued batch job on a pass of its main scheduler, which runs about once a second
# (the sandbox's slurmctld log: "sched: Allocate" lines at the same fraction of a second, job after
# job, --vcluster or not).  A job therefore waits 0-1 s for the next pass depending only on when it was
# submitted.  The fixed sleeps of this benchmark (SETTLE_SECONDS before a vc job only) used to put the
# two kinds of job at different points of that cycle, run after run, which showed up as a steady
# difference in "queued -> allocated" that had nothing to do with slurm-vc.  Every job is now
# submitted SUBMIT_AFTER_PASS seconds after a pass, so both wait the same (half a cycle, the average
# a user sees).
SCHEDULER_PASS_SECONDS = 1.0
SUBMIT_AFTER_PASS = 0.5
_ALLOCATE_RE = re.compile(r"^\[(\S+)\] sched: Allocate JobId=")


def last_scheduler_pass(ctld_log: str) -> Optional[float]:
    """When slurmctld's main scheduler last allocated a job (epoch seconds), from its log."""
    last = None
    for line in ctld_log.splitlines():
        match = _ALLOCATE_RE.match(line)
        if match:
            last = match.group(1)
    return timeline.parse_log_time(last) if last else None


def next_submit_time(last_pass: float, now: float) -> float:
    """The first moment after ``now`` (plus a margin) that lies SUBMIT_AFTER_PASS after a pass."""
    target = last_pass + SUBMIT_AFTER_PASS
    if target < now + 0.05:
        passes = int((now + 0.05 - target) // SCHEDULER_PASS_SECONDS) + 1
        target += passes * SCHEDULER_PASS_SECONDS
    return target


def wait_for_submit_phase(sandbox: Sandbox) -> None:
    """Sleep until SUBMIT_AFTER_PASS after one of slurmctld's scheduler passes (no-op before the first)."""
    last_pass = last_scheduler_pass(jobwatch.read_text(sandbox.layout.log / "slurmctld.log"))
    if last_pass is not None:
        time.sleep(max(0.0, next_submit_time(last_pass, time.time()) - time.time()))


def wait_idle(sandbox: Sandbox, timeout: float = 120) -> None:
    """Wait until every node is idle (the previous job's epilog done), so jobs start alike."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = sandbox.node_states()
        if states and all(state.startswith("idle") for state in states.values()):
            return
        time.sleep(0.1)
    raise SystemExit(f"nodes not idle after {timeout:.0f} s: {sandbox.node_states()}")


def submit_and_watch(
    sandbox: Sandbox, work: Path, nodes: int, vcluster: str, timeout: float, scratch: Path
) -> JobRun:
    """Submit the job, watch it to the end of its teardown, and assemble its timeline."""
    wait_idle(sandbox)
    if vcluster:
        time.sleep(SETTLE_SECONDS)
    argv = ["sbatch", f"-N{nodes}", "-o", str(work / "%j.out")]
    if vcluster:
        argv.append(f"--vcluster={vcluster}")
    argv.append(str(work / "job.sh"))
    wait_for_submit_phase(sandbox)
    submit = time.time()
    result = sandbox.exec_argv(argv, cwd=str(work), capture=True, timeout=120)
    match = re.search(r"Submitted batch job (\d+)", result.stdout)
    if not match:
        raise SystemExit(f"sbatch failed: {result.stdout}{result.stderr}")
    job_id = match.group(1)
    watcher = CapturingWatcher(jobwatch.state_dirs(sandbox), job_id, scratch)
    last_state = {"state": ""}
    asked = {"at": 0.0}
    output = work / f"{job_id}.out"

    def finished() -> bool:
        # Asking Slurm is a process and work in slurmctld, ~10 ms of CPU each time: at the watcher's
        # 4 times a second that is a few percent of this machine, taken from the guests booting
        # meanwhile, which the plain QEMU baseline does not pay.  Until the job script has started
        # (the guests are up by then) ask every SLOW_STATE_POLL seconds; a failed prolog is still seen.
        now = time.monotonic()
        if now - asked["at"] < SLOW_STATE_POLL and "SCRIPT_START" not in jobwatch.read_text(output):
            return False
        asked["at"] = now
        state, _ = jobwatch.job_state(sandbox, job_id)
        if state != "GONE":
            last_state["state"] = state
        return state in TERMINAL_JOB_STATES or state == "GONE"

    if not watcher.run(finished, timeout):
        sandbox.exec_argv(["scancel", job_id], user="root", capture=True)
        raise SystemExit(f"job {job_id} (-N{nodes}, vcluster={vcluster}) did not finish in {timeout:.0f} s")
    job = jobwatch.job_times(
        job_id,
        submit,
        watcher.records,
        jobwatch.read_text(work / f"{job_id}.out"),
        jobwatch.read_text(sandbox.layout.log / "slurmctld.log"),
    )
    run = JobRun(
        nodes,
        vcluster,
        job,
        dict(watcher.records),
        last_state["state"],
        watcher.qemu_argv,
        watcher.files,
        watcher.guest_uptime,
    )
    if run.state != "COMPLETED" or job.script_start is None:
        raise SystemExit(
            f"job {job_id} (-N{nodes}, vcluster={vcluster}) ended {run.state}; output:\n"
            + jobwatch.read_text(work / f"{job_id}.out")
        )
    return run


# ------------------------------------------------------------------------------------------ plain QEMU

# QEMU options that take no value (everything else libvirt passes is "-option value").
FLAGS_WITHOUT_VALUE = {"-S", "-no-user-config", "-nodefaults", "-no-shutdown", "-no-reboot", "-enable-kvm"}


@dataclass(frozen=True)
class GuestSpec:
    """One vc guest, as the plain-QEMU baseline needs it."""

    argv: tuple[str, ...]  # the QEMU argv libvirt ran
    files: dict[str, str]  # per-job files the argv names (seed image) -> copies that outlived the job
    cpus: str  # taskset CPU list: the union of the vCPU and emulator pins
    page_size: int  # hugepage size backing the guest's RAM in bytes, 0 = normal pages
    pages: dict[int, int]  # host NUMA node -> hugepages the guest's RAM needs there
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    memory_kib: int = 262144
    vcpus: int = 1
    mac: str = "52:54:00:00:00:01"


def job_files(argv: list[str]) -> list[str]:
    """Files named by ``-blockdev`` options of a libvirt QEMU argv (the per-job seed image)."""
    found = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "-blockdev" and value.startswith("{"):
            filename = json.loads(value).get("filename")
            if filename:
                found.append(filename)
    return found


def _options(text: str) -> tuple[str, dict[str, str]]:
    """'socket,id=x,fd=3' -> ('socket', {'id': 'x', 'fd': '3'}) (QEMU's key=value option syntax)."""
    head, *rest = text.split(",")
    return head, dict(item.split("=", 1) if "=" in item else (item, "") for item in rest)


def standalone_argv(argv: list[str], directory: Path, mem_path: str, files: dict[str, str]) -> list[str]:
    """libvirt's QEMU argv turned into one plain QEMU can run alone: the same virtual machine (machine,
    CPU model, memory backing, NUMA, devices, kernel), without what only libvirt can provide.

    Dropped: ``-S`` (libvirt resumes the paused guest over QMP), the QMP monitor, the master-key
    secret, ``-add-fd``.  Replaced: the tap fd by a hub port (a NIC with nothing behind it; the guest
    configures it as usual), file descriptors and ptys of character devices by files and sockets in
    ``directory``, the hugetlbfs path by ``mem_path``, per-job files by ``files``.  Raises ValueError
    if anything still refers to a file descriptor libvirt would have passed.
    """
    out: list[str] = [argv[0]]
    index = 1
    while index < len(argv):
        flag = argv[index]
        if flag in FLAGS_WITHOUT_VALUE or not flag.startswith("-") or index + 1 >= len(argv):
            if flag != "-S":
                out.append(flag)
            index += 1
            continue
        value = argv[index + 1]
        index += 2
        if flag == "-add-fd":
            continue
        if flag == "-name":
            value = value.replace("guest=", "guest=plain-", 1)
        elif flag == "-mon" and "chardev=charmonitor" in value:
            continue
        elif flag == "-object" and value.startswith("{"):
            obj = json.loads(value)
            if obj.get("qom-type") == "secret":
                continue
            if "mem-path" in obj:
                obj["mem-path"] = mem_path
            value = json.dumps(obj, separators=(",", ":"))
        elif flag == "-blockdev" and value.startswith("{"):
            block = json.loads(value)
            if block.get("filename") in files:
                block["filename"] = files[block["filename"]]
            value = json.dumps(block, separators=(",", ":"))
        elif flag == "-netdev":
            netdev_id = json.loads(value)["id"] if value.startswith("{") else _options(value)[1]["id"]
            value = f"hubport,hubid=0,id={netdev_id}"
        elif flag == "-chardev":
            backend, opts = _options(value)
            chardev_id = opts["id"]
            if chardev_id == "charmonitor":
                continue
            if backend == "socket":
                value = f"socket,id={chardev_id},path={directory / (chardev_id + '.sock')},server=on,wait=off"
            elif backend in ("pty", "file"):
                value = f"file,id={chardev_id},path={directory / (chardev_id + '.log')}"
        if "fd=" in value or "/dev/fdset" in value:
            raise ValueError(f"cannot run {flag} {value} without libvirt")
        out += [flag, value]
    return out


def guest_spec(domain_xml: str, argv: list[str], files: dict[str, str]) -> GuestSpec:
    """What the baseline needs of one vc guest, from its domain XML and libvirt's QEMU argv."""
    root = etree.fromstring(domain_xml.encode())
    pins = {el.get("cpuset") for el in root.iterfind("cputune/vcpupin")}
    pins |= {el.get("cpuset") for el in root.iterfind("cputune/emulatorpin")}
    pins.discard(None)
    page = root.find("memoryBacking/hugepages/page")
    page_size = int(page.get("size")) * 1024 if page is not None else 0  # KiB in the XML
    pages: dict[int, int] = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "-object" and value.startswith("{") and page_size:
            obj = json.loads(value)
            if obj.get("qom-type") == "memory-backend-file":
                node = (obj.get("host-nodes") or [0])[0]
                pages[node] = pages.get(node, 0) + int(obj["size"]) // page_size
    mac = root.find("devices/interface/mac")
    return GuestSpec(
        argv=tuple(argv),
        files=dict(files),
        cpus=",".join(sorted(pins)) or f"0-{os.cpu_count() - 1}",
        page_size=page_size,
        pages=pages,
        kernel=root.findtext("os/kernel") or "",
        initrd=root.findtext("os/initrd") or "",
        cmdline=root.findtext("os/cmdline") or "",
        memory_kib=int(root.findtext("memory") or 262144),
        vcpus=int(root.findtext("vcpu") or 1),
        mac=mac.get("address") if mac is not None else "52:54:00:00:00:01",
    )


def guest_specs(run: JobRun) -> list[GuestSpec]:
    """The baseline's specs of every guest of a vc run whose XML and QEMU argv were captured."""
    specs = []
    for record in run.records.values():
        if not record.domain_xml:
            continue
        name = etree.fromstring(record.domain_xml.encode()).findtext("name") or ""
        if name in run.qemu_argv:
            specs.append(guest_spec(record.domain_xml, run.qemu_argv[name], run.files))
    return specs


def minimal_argv(spec: GuestSpec, directory: Path) -> list[str]:
    """The lighter baseline of earlier runs (``--baseline minimal``): the guest's kernel, initrd,
    command line, memory, vCPUs, CPU and machine model, a NIC and the ready port; no hugepage-backed
    (preallocated) RAM, seed disk, agent channel or RNG."""
    argv = list(spec.argv)
    extra = []
    for flag in ("-cpu", "-machine"):
        if flag in argv:
            value = argv[argv.index(flag) + 1]
            extra += [flag, value if flag == "-cpu" else value.split(",")[0]]
    return [
        argv[0] if argv else "qemu-system-x86_64",
        "-accel",
        "tcg",
        *extra,
        "-m",
        f"{spec.memory_kib // 1024}M",
        "-smp",
        str(spec.vcpus),
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-kernel",
        spec.kernel,
        "-initrd",
        spec.initrd,
        "-append",
        spec.cmdline,
        "-serial",
        f"file:{directory / 'console.log'}",
        "-netdev",
        "hubport,id=net0,hubid=0",
        "-device",
        f"virtio-net-pci,netdev=net0,mac={spec.mac}",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        f"file,id=ready,path={directory / 'ready.log'}",
        "-device",
        "virtserialport,chardev=ready,name=org.slurm-vc.ready",
    ]


# libvirt puts every guest in cgroups under "machine": a cpu group, so all guests on the machine
# share that group's CPU weight against the other processes, and a cpuset group holding every QEMU
# thread on the guest's pinned CPUs.  The baseline gets the same: a plain QEMU left in the root cpu
# group would get a whole root-level share on a loaded machine and look several times faster than it
# is; and with taskset alone QEMU widens the affinity of its memory-preallocation threads to the whole
# NUMA node (its thread-context object does), so with several guests pinned to one CPU the baseline
# preallocated on an idle CPU while libvirt's guests did it on their own, busy one.
CGROUP_PARENTS = (
    Path("/sys/fs/cgroup/cpu/machine"),  # cgroup v1 (this project's test machines)
    Path("/sys/fs/cgroup/cpuset/machine"),
    Path("/sys/fs/cgroup/machine"),  # cgroup v2
)
# Joins the cgroups named in $VCBENCH_CGROUPS, then execs the command: QEMU starts inside them.
JOIN_CGROUPS = 'for group in $VCBENCH_CGROUPS; do echo $$ > "$group/cgroup.procs"; done; exec "$@"'


def machine_cgroups(name: str, cpus: str, mems: str) -> list[Path]:
    """cgroups for a plain QEMU beside libvirt's guests, confined to ``cpus`` and ``mems``."""
    groups = []
    for parent in CGROUP_PARENTS:
        if not (parent / "cgroup.procs").exists():
            continue
        path = parent / name
        path.mkdir(exist_ok=True)
        if (path / "cpuset.cpus").exists():  # must be set before a task may join
            (path / "cpuset.cpus").write_text(cpus)
            (path / "cpuset.mems").write_text(mems)
        groups.append(path)
    return groups


def remove_cgroup(path: Path) -> None:
    for _ in range(50):  # the cgroup empties when QEMU's last thread is gone
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


class HugetlbMounts:
    """Private hugetlbfs mounts (one per page size) for the baseline's RAM; unmounted by close()."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.mounted: dict[int, Path] = {}

    def path(self, page_size: int) -> Path:
        if page_size not in self.mounted:
            target = self.scratch / f"hugetlbfs-{page_size // 1024}k"
            target.mkdir(exist_ok=True)
            subprocess.run(
                ["mount", "-t", "hugetlbfs", "-o", f"pagesize={page_size // 1024}k", "none", str(target)],
                check=True,
            )
            self.mounted[page_size] = target
        return self.mounted[page_size]

    def close(self) -> None:
        for target in self.mounted.values():
            subprocess.run(["umount", str(target)], check=False)
        self.mounted.clear()


def guest_uptime(console_text: str) -> Optional[float]:
    """The guest's own uptime at its ready line, from its console log (None if not logged yet)."""
    match = GUEST_UPTIME_RE.search(console_text)
    return float(match.group(1)) if match else None


def plain_qemu_boot(
    specs: list[GuestSpec], scratch: Path, baseline: str, timeout: float = 300
) -> tuple[float, Optional[float]]:
    """Start one QEMU per spec at once; seconds until the last one printed its ready line, and that
    guest's own uptime at its ready line.

    Each QEMU starts inside cgroups confining it to the guest's pinned CPUs (see CGROUP_PARENTS).
    For the ``same`` baseline the hugepages the guests' RAM needs are added to the pools first (not
    timed, like the prolog's few-millisecond ``hugepages`` step) and given back afterwards.
    """
    procs = []
    groups: list[Path] = []
    pool = HugepagePool(str(scratch / "hugepage-ledgers"))
    job = f"vcbench-plain-{os.getpid()}"
    # Mounted only while these QEMUs run: a libvirtd starting meanwhile (a test's private one) would
    # take any hugetlbfs mount it sees for its own guests.
    mounts = HugetlbMounts(scratch)
    try:
        argvs = []
        if baseline == "same":
            time.sleep(SETTLE_SECONDS)
        for index, spec in enumerate(specs):
            directory = Path(tempfile.mkdtemp(prefix=f"q{index}-", dir=scratch))
            if baseline == "minimal":
                argv = minimal_argv(spec, directory)
            else:
                mem_path = str(mounts.path(spec.page_size)) if spec.page_size else ""
                argv = standalone_argv(list(spec.argv), directory, mem_path, spec.files)
                if spec.page_size:
                    pool.reserve(f"{job}-{index}", spec.page_size, spec.pages)
            mems = ",".join(str(node) for node in sorted(spec.pages)) or "0"
            mine = machine_cgroups(f"vcbench-plain-{os.getpid()}-{index}", spec.cpus, mems)
            groups += mine
            environment = {**os.environ, "VCBENCH_CGROUPS": " ".join(str(group) for group in mine)}
            launcher = ["sh", "-c", JOIN_CGROUPS, "sh", "taskset", "-c", spec.cpus]
            argvs.append((directory, [*launcher, *argv], environment))
        started = time.monotonic()
        for directory, argv, environment in argvs:
            log = open(directory / "qemu.log", "wb")
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment)
            log.close()
            procs.append((directory, proc))
        ready: dict[int, float] = {}
        deadline = started + timeout
        while len(ready) < len(procs):
            if time.monotonic() > deadline:
                raise SystemExit(f"plain QEMU: no ready line after {timeout:.0f} s")
            for index, (directory, proc) in enumerate(procs):
                if index in ready:
                    continue
                if any(READY_TEXT in jobwatch.read_text(log) for log in directory.glob("*.log")):
                    ready[index] = time.monotonic() - started
                elif proc.poll() is not None:
                    log_text = jobwatch.read_text(directory / "qemu.log")
                    raise SystemExit(f"plain QEMU exited {proc.returncode}: {log_text}")
            time.sleep(0.02)
        last = max(ready, key=lambda index: ready[index])
        directory = procs[last][0]
        uptime = None
        for _ in range(50):  # the slowest guest's uptime line follows its ready line
            found = [guest_uptime(jobwatch.read_text(log)) for log in directory.glob("*.log")]
            uptime = next((value for value in found if value is not None), None)
            if uptime is not None:
                break
            time.sleep(0.02)
        return ready[last], uptime
    finally:
        for _, proc in procs:  # ours, by PID
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        for group in groups:
            remove_cgroup(group)
        for ledger in pool.list_ledgers():
            pool.release(ledger.job_id)
        mounts.close()


# ------------------------------------------------------------------------------------------ phases


def phase_values(run: JobRun) -> dict[str, float]:
    """Seconds per phase of one job (gated by the slowest node, as the job script is)."""
    job = run.job
    values: dict[str, float] = {}

    def latest(key: str) -> Optional[float]:
        found = timeline.milestone_values(job, key, True)
        return max(found) if found else None

    def put(name: str, end: Optional[float], start: Optional[float]) -> None:
        if end is not None and start is not None:
            values[name] = end - start

    put("sbatch -> queued", job.queued, job.submit)
    put("queued -> allocated", job.allocated, job.queued)
    if not run.vcluster:
        put("allocated -> script start", job.script_start, job.allocated)
    else:
        put("allocated -> prolog start", latest("prolog_start"), job.allocated)
        before_libvirt, libvirt_and_boot = [], []
        for node in job.nodes:
            if (
                None in (node.prolog_start, node.guest_started, node.guest_ready)
                or "domain" not in node.steps
            ):
                continue
            create_call = node.guest_started - node.steps["domain"]  # type: ignore[operator]
            before_libvirt.append(create_call - node.prolog_start)  # type: ignore[operator]
            libvirt_and_boot.append(node.guest_ready - create_call)  # type: ignore[operator]
        if before_libvirt:
            values["prolog start -> libvirt create"] = max(before_libvirt)
            values["libvirt create -> guest ready"] = max(libvirt_and_boot)
        put("last guest ready -> script start", job.script_start, latest("guest_ready"))
        ready_at = {node.node: node.guest_ready for node in job.nodes if node.guest_ready is not None}
        last_ready = max(ready_at, key=lambda node: ready_at[node]) if ready_at else None
        if last_ready in run.guest_uptime:  # the guest the job script waited for
            values["guest uptime at ready"] = run.guest_uptime[last_ready]
        put("script end -> teardown done", latest("teardown_done"), job.script_end)
        for step, found in timeline.prolog_step_rows(job):
            values[f"step {step}"] = found.hi
    values["sbatch -> script start"] = job.script_start - job.submit
    if "queued -> allocated" in values:
        # Slurm's scheduler runs once a second: each job waits 0-1 s for it whether it asks for a
        # virtual cluster or not.  Leaving that wait out of both jobs removes noise, not overhead.
        values["without scheduler wait"] = values["sbatch -> script start"] - values["queued -> allocated"]
    if "libvirt create -> guest ready" in values:
        # Everything in this very run that is not libvirt starting and booting the slowest guest.
        values["without create -> ready"] = (
            values["sbatch -> script start"] - values["libvirt create -> guest ready"]
        )
    return values


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({key for run in runs for key in run})
    return {key: timeline.median([run[key] for run in runs if key in run]) for key in keys}


def fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f} s"


def slurm_vc_phases(plain: dict[str, float], vc: dict[str, float]) -> Optional[float]:
    """What slurm-vc itself adds, without Slurm's scheduler and libvirt/boot: validator at submit,
    prolog start-up, prolog steps before libvirt, and the hand-over to the job script."""
    try:
        return (
            vc["sbatch -> queued"]
            - plain["sbatch -> queued"]
            + vc["allocated -> prolog start"]
            + vc["prolog start -> libvirt create"]
            + vc["last guest ready -> script start"]
            - plain["allocated -> script start"]
        )
    except KeyError:
        return None


def paired_overheads(
    data: dict[str, list], key: str = "sbatch -> script start", own_clock: bool = False
) -> list[float]:
    """Each repetition's own overhead: its vc job - its plain job - its plain-QEMU boot (pure).

    The three measurements of one repetition run back to back, so drift in machine load and in
    the cold-memory cost of this VM hits them alike; their median is steadier than a difference
    of three medians.  ``key``: "without scheduler wait" leaves Slurm's 0-1 s tick out of both jobs.
    ``own_clock``: the guest's boot by its own clock (kernel start -> ready line) is taken out of
    the vc job and of the plain QEMU: what is left is the control plane plus QEMU's start-up and
    firmware on each side, without the seconds-long TCG boot whose spread swamps the rest.
    """
    uptimes = data.get("qemu_uptime") or [None] * len(data["qemu"])
    values = []
    for plain, vc, boot, boot_uptime in zip(data["plain"], data["vc"], data["qemu"], uptimes):
        if key not in vc or key not in plain:
            continue
        if not own_clock:
            values.append(vc[key] - plain[key] - boot)
        elif boot_uptime is not None and "guest uptime at ready" in vc:
            values.append(vc[key] - vc["guest uptime at ready"] - plain[key] - (boot - boot_uptime))
    return values


def report(results: dict[int, dict[str, list]], reps: int) -> str:
    """Markdown tables from ``{n: {"plain": [phase values], "vc": [phase values], "qemu": [seconds]}}``."""
    lines = []
    summary = [
        "| nodes | plain job | --vcluster job | plain QEMU boot | overhead (vs plain QEMU) | per node "
        "| same, scheduler wait left out | per node | overhead (timeline) | slurm-vc phases |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, data in sorted(results.items()):
        plain = medians(data["plain"])
        vc = medians(data["vc"])
        boot = timeline.median(data["qemu"])
        overhead = vc["sbatch -> script start"] - plain["sbatch -> script start"] - boot
        unscheduled = None
        if "without scheduler wait" in vc and "without scheduler wait" in plain:
            unscheduled = vc["without scheduler wait"] - plain["without scheduler wait"] - boot
        own = vc.get("without create -> ready")
        own_overhead = None if own is None else own - plain["sbatch -> script start"]
        summary.append(
            f"| {n} | {fmt(plain['sbatch -> script start'])} | {fmt(vc['sbatch -> script start'])} | "
            f"{fmt(boot)} | {fmt(overhead)} | {fmt(overhead / n)} | {fmt(unscheduled)} | "
            f"{fmt(None if unscheduled is None else unscheduled / n)} | {fmt(own_overhead)} | "
            f"{fmt(slurm_vc_phases(plain, vc))} |"
        )
        paired = paired_overheads(data)
        unpaired = paired_overheads(data, "without scheduler wait")
        lines.append(f"\n{n} node(s), overhead of each repetition (vc - plain job - plain QEMU boot):\n")
        heads = " | ".join(f"rep {i + 1}" for i in range(len(paired)))
        lines.append(f"| | {heads} | median | per node |")
        lines.append("|---|" + "---|" * (len(paired) + 2))
        rows = (
            ("overhead", paired),
            ("scheduler wait left out", unpaired),
            ("guest's own boot left out", paired_overheads(data, own_clock=True)),
            ("both left out", paired_overheads(data, "without scheduler wait", own_clock=True)),
        )
        for label, values in rows:
            if values:
                middle = timeline.median(values)
                cells = " | ".join(f"{value:.2f}" for value in values)
                lines.append(f"| {label} | {cells} | {middle:.2f} s | {middle / n:.2f} s |")
        lines.append(f"\n{n} node(s), medians of {reps} runs (the slowest node gates each phase):\n")
        lines.append("| phase | plain job | --vcluster job | over plain |")
        lines.append("|---|---|---|---|")
        rows = [
            ("sbatch -> queued", "sbatch -> queued", ""),
            ("queued -> allocated", "queued -> allocated", ""),
            ("allocated -> prolog start", None, ""),
            ("prolog start -> libvirt create", None, ""),
            ("libvirt create -> guest ready", "qemu", " (plain: QEMU launch -> ready)"),
            (
                "last guest ready -> script start",
                "allocated -> script start",
                " (plain: allocated -> script start)",
            ),
            ("sbatch -> script start", "sbatch -> script start", ""),
            ("script end -> teardown done", None, ""),
        ]
        for name, baseline, note in rows:
            mine = vc.get(name)
            base = boot if baseline == "qemu" else plain.get(baseline) if baseline else None
            extra = "" if mine is None or base is None else f"{mine - base:+.2f} s"
            lines.append(f"| {name}{note} | {fmt(base)} | {fmt(mine)} | {extra} |")
        steps = {k[5:]: v for k, v in vc.items() if k.startswith("step ")}
        order = [s for s in timeline.PROLOG_STEPS if s in steps] + [
            s for s in steps if s not in timeline.PROLOG_STEPS
        ]
        lines.append("\nprolog steps (slowest node): " + ", ".join(f"{s} {steps[s]:.3f} s" for s in order))
    return "\n".join(summary + lines)


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--nodes", default="1,2,3", help="node counts, comma-separated (default 1,2,3)")
    parser.add_argument("--name", default="vcbench", help="sandbox name (default vcbench)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per job (default 300)")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox up")
    parser.add_argument("--json", help="also write the per-run phase values to this file")
    parser.add_argument(
        "--baseline",
        choices=("same", "minimal"),
        default="same",
        help="plain QEMU boots the same virtual machine as libvirt did (default), or the lighter one of"
        " earlier runs (no hugepage-backed RAM, seed disk, agent channel, RNG)",
    )
    parser.add_argument(
        "--image",
        choices=IMAGES,
        default="tiny",
        help="the guest: tiny (a busybox Linux, boots in 5-10 s under TCG; default) or null (prints"
        " the ready line at once: leaves QEMU and the control plane, without the noise of a boot)",
    )
    parser.add_argument("--from-json", help="only print the report of an earlier --json file")
    args = parser.parse_args()
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        print(report({int(n): v for n, v in data["results"].items()}, data["reps"]))
        return 0
    counts = [int(n) for n in args.nodes.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("run as root (the sandbox cluster)")
    # A SIGTERM unwinds like an error, so the finally blocks give back the baseline's hugepages and
    # bring the sandbox down.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sandbox = Sandbox(args.name)
    sandbox.up(nodes=max(counts))
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vcbench-"))
    scratch = Path(tempfile.mkdtemp(prefix="vcbench-qemu-"))
    try:
        os.chmod(work, 0o755)
        (work / "job.sh").write_text(JOB_SCRIPT)
        os.chmod(work / "job.sh", 0o755)
        user = pwd.getpwnam(sandbox.user)
        os.chown(work, user.pw_uid, user.pw_gid)
        print(f"# warm-up (slurmctld's first scheduling pass, page cache) on {args.name}", flush=True)
        submit_and_watch(sandbox, work, max(counts), "", args.timeout, scratch)
        submit_and_watch(sandbox, work, 1, args.image, args.timeout, scratch)
        results: dict[int, dict[str, list]] = {
            n: {"plain": [], "vc": [], "qemu": [], "qemu_uptime": []} for n in counts
        }
        specs_of: dict[int, list[GuestSpec]] = {}
        for rep in range(args.reps):
            order = counts[rep % len(counts) :] + counts[: rep % len(counts)]
            for n in order:
                # Plain QEMU before the vc job on odd repetitions (with the guests of the previous vc
                # run of this size), after it on even ones: load drift hits both alike.
                early = None
                if rep % 2 and n in specs_of:
                    early = plain_qemu_boot(specs_of[n], scratch, args.baseline)
                plain = submit_and_watch(sandbox, work, n, "", args.timeout, scratch)
                vc = submit_and_watch(sandbox, work, n, args.image, args.timeout, scratch)
                specs = guest_specs(vc)
                if len(specs) != n:
                    raise SystemExit(
                        f"job {vc.job.job_id}: got the XML and argv of {len(specs)} of {n} guests"
                    )
                specs_of[n] = specs
                boot, boot_uptime = early or plain_qemu_boot(specs, scratch, args.baseline)
                results[n]["plain"].append(phase_values(plain))
                results[n]["vc"].append(phase_values(vc))
                results[n]["qemu"].append(boot)
                results[n]["qemu_uptime"].append(boot_uptime)
                print(
                    f"rep {rep + 1} n={n}: plain {plain.time_to_cluster:.2f} s, "
                    f"vc {vc.time_to_cluster:.2f} s, plain QEMU boot {boot:.2f} s",
                    flush=True,
                )
        load = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(load_before, os.getloadavg()))
        print(f"\n# {platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}")
        print(f"# load average (1/5/15 min) at start/end: {load}")
        print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
        print(report(results, args.reps))
        if args.json:
            data = {"reps": args.reps, "image": args.image, "results": results}
            Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep:
            sandbox.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
