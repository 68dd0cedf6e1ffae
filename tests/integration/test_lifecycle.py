"""The guest lifecycle on a real (private) libvirtd with real QEMU (TCG) and real hugepage pools.

One simulated node: a network namespace with a bridge, a private libvirtd inside it, the tiny guest.
Each test checks the outcome from outside the lifecycle: libvirt, /proc, sysfs, the file system.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import pytest

from slurm_vc import state
from slurm_vc.errors import GuestNotReadyError
from slurm_vc.hypervisor import Hypervisor
from slurm_vc.lifecycle import STEPS, Environment, NodeJob, start_guest, teardown
from slurm_vc.network import tap_name

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def hugepage_ledger(config, job_id: int):
    """The job's hugepage ledger (slurm_vc.hugepages), or None.

    The tests check the job's own pages (its ledger, QEMU's mappings), never the global pool size:
    other work on the machine may resize the pools at any moment.
    """
    from slurm_vc.hugepages import HugepagePool

    return HugepagePool.from_config(config).ledger(str(job_id))


def qemu_hugepages(pid: int) -> dict[str, int]:
    """NUMA node -> 2M pages mapped by the QEMU process (from /proc/PID/numa_maps)."""
    pages: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/numa_maps").read_text().splitlines():
        if "kernelpagesize_kB=2048" in line:
            for field in line.split():
                if re.match(r"^N\d+=\d+$", field):
                    node, count = field.split("=")
                    pages[node] = pages.get(node, 0) + int(count)
    return pages


def channel_text(path: Path, needle: str, wait: float = 10.0) -> str:
    """The ready channel file's text once it holds ``needle`` (or as it is after ``wait`` seconds).

    The tiny guest writes its ready line to the channel in the background and to the console at once,
    and the serial probe accepts either: the channel's copy may land a moment after start_guest
    returned (seen with QEMU 10's fd-passed file chardev).
    """
    deadline = time.monotonic() + wait
    while True:
        text = path.read_text() if path.exists() else ""
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def make_job(job_id: int, request: str = "tiny,vcpus=1,mem=128M") -> NodeJob:
    return NodeJob(
        job_id=job_id,
        node="n0",
        nodes=("n0", "n1"),
        cpus=(0, 1),
        memory=512 * MIB,
        vcluster=request,
    )


def expected_plan(job: NodeJob, config):
    from slurm_vc.plan import place
    from slurm_vc.request import parse_request
    from slurm_vc.topology import read_topology

    return place(parse_request(job.vcluster, config), config, read_topology("/"), job.cpus, job.memory)


def link_exists(netns: str, name: str) -> bool:
    from slurm_vc.netdev import link_info

    return link_info(name, netns=netns) is not None


def qemu_processes(name: str) -> list[int]:
    import psutil

    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(arg.startswith(f"guest={name},") for arg in proc.info.get("cmdline") or []):
            pids.append(proc.pid)
    return pids


def assert_nothing_left(config, env: Environment, job: NodeJob) -> None:
    name = f"vc-{job.job_id}-{job.node}"
    with Hypervisor(config.host.libvirt_uri) as hv:
        assert name not in hv.list_domains()
    assert qemu_processes(name) == []
    assert not state.job_dir(config.state_dir, job.job_id).exists()  # overlay, seed, logs inside
    assert not link_exists(env.netns, tap_name(job.job_id, 0))
    assert hugepage_ledger(config, job.job_id) is None  # released (the pool shrank by what it added)
    from slurm_vc.netdev import isolated_jobs

    assert job.job_id not in isolated_jobs(netns=env.netns)


@pytest.fixture
def env(node_netns) -> Environment:
    return Environment(netns=node_netns)


def test_start_ready_pinned_hugepages_then_clean_teardown(node_config, env):
    job = make_job(101)
    info = start_guest(job, node_config, env)
    try:
        assert info.name == "vc-101-n0"
        plan = expected_plan(job, node_config)
        # Allocation CPUs 0-1 with one core kept for the emulator: vCPU and emulator on different CPUs.
        assert len(plan.vcpu_pins) == 1 and set(plan.vcpu_pins.values()).isdisjoint(plan.emulator_cpus)
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            assert hv.is_running(info.name)
            assert hv.vcpu_pins(info.name) == {vcpu: (cpu,) for vcpu, cpu in plan.vcpu_pins.items()}
            assert hv.emulator_pins(info.name) == tuple(plan.emulator_cpus)
            pid = hv.qemu_pid(info.name)
        # The vCPU thread itself is pinned (not only libvirt's record of it).
        vcpu_threads = [
            task
            for task in Path(f"/proc/{pid}/task").iterdir()
            if (task / "comm").read_text().startswith("CPU 0/")
        ]
        assert vcpu_threads, "no vCPU thread found in QEMU"
        allowed = [
            line.split(":")[1].strip()
            for line in (vcpu_threads[0] / "status").read_text().splitlines()
            if line.startswith("Cpus_allowed_list")
        ]
        assert allowed == [str(plan.vcpu_pins[0])]
        # Guest RAM (128M) is 64 pages of 2M on host node 0, as planned, reserved for this job.
        assert plan.page_size == 2 * MIB and plan.hugepages == {0: 64}
        ledger = hugepage_ledger(node_config, job.job_id)
        assert ledger.state == "held" and ledger.nodes[0].asked == 64
        assert qemu_hugepages(pid) == {"N0": 64}
        numa_maps = Path(f"/proc/{pid}/numa_maps").read_text()
        huge = [line for line in numa_maps.splitlines() if "kernelpagesize_kB=2048" in line]
        assert all("bind:0" in line for line in huge), huge  # numatune strict: node 0 only
        # Everything the guest needs lives in the job directory; the tap exists in the node netns.
        job_dir = Path(info.job_dir)
        assert (job_dir / "seed.iso").is_file()
        assert "SLURM-VC-READY" in channel_text(job_dir / "ready.log", "SLURM-VC-READY")
        assert link_exists(env.netns, tap_name(job.job_id, 0))
    finally:
        assert teardown(job.job_id, node_config, env) is True
    assert_nothing_left(node_config, env, job)
    # Teardown twice: nothing to do, no error.
    assert teardown(job.job_id, node_config, env) is False


# ------------------------------------------------------------------------------------ fault tests


def _crash_child(job, config, env, crash_step, mid_domain):
    """Run start_guest and die (no clean-up, like a killed prolog) at ``crash_step``."""
    from slurm_vc import hypervisor

    if mid_domain:
        real_start = hypervisor.Hypervisor.start

        def start_then_die(self, xml):
            real_start(self, xml)
            os._exit(17)  # the domain runs, the state still says "planned"

        hypervisor.Hypervisor.start = start_then_die

    def hook(step):
        if step == crash_step:
            os._exit(17)

    try:
        start_guest(job, config, env, crash_hook=hook)
    except BaseException as exc:  # noqa: BLE001 - report anything to the parent through the exit code
        print(f"start_guest failed: {exc}", flush=True)
        os._exit(3)
    os._exit(0)


@pytest.mark.parametrize("crash_step", [*STEPS, "mid-domain"])
def test_teardown_after_crash_between_steps(node_config, env, crash_step):
    """A prolog killed before any step, or between createXML and recording it: teardown misses nothing."""
    job = make_job(200 + ([*STEPS, "mid-domain"].index(crash_step)), "tinydisk,vcpus=1,mem=128M")
    context = multiprocessing.get_context("fork")
    child = context.Process(
        target=_crash_child, args=(job, node_config, env, crash_step, crash_step == "mid-domain")
    )
    child.start()
    child.join(120)
    assert child.exitcode == 17
    recorded = state.read_state(node_config.state_dir, job.job_id)
    assert recorded is not None
    kinds = [resource.kind for resource in recorded.resources]
    expected = {
        "isolation": [],
        "hugepages": ["isolation"],
        "overlay": ["isolation", "hugepages"],
        "seed": ["isolation", "hugepages", "overlay"],
        "domain": ["isolation", "hugepages", "overlay", "seed"],
        "ready": ["isolation", "hugepages", "overlay", "seed", "domain"],
        "mid-domain": ["isolation", "hugepages", "overlay", "seed", "domain"],
    }[crash_step]
    assert kinds == expected
    if crash_step in ("ready", "mid-domain"):
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            assert hv.is_running(f"vc-{job.job_id}-n0")  # really left running by the "crash"
        assert recorded.find("domain").status == ("planned" if crash_step == "mid-domain" else "created")
    assert teardown(job.job_id, node_config, env) is True
    assert_nothing_left(node_config, env, job)
    assert teardown(job.job_id, node_config, env) is False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_qemu_killed_mid_boot_is_a_node_fault_and_cleans_up(node_config, env, sig):
    """QEMU killed on the host before the guest is ready (the OOM killer's SIGKILL, or another
    process's SIGTERM): not the user's fault, so HypervisorError (the node drains, the job is
    requeued), told apart by libvirt's domain log; and nothing of the job is left."""
    from slurm_vc.errors import HypervisorError

    job = make_job(301)

    def kill_qemu(step):
        if step == "ready":
            with Hypervisor(node_config.host.libvirt_uri) as hv:
                os.kill(hv.qemu_pid(f"vc-{job.job_id}-n0"), sig)

    expected = "reason=crashed" if sig == signal.SIGKILL else f"signal {int(sig)} by "
    with pytest.raises(
        HypervisorError, match="stopped before it became ready, but not by its own doing"
    ) as failure:
        start_guest(job, node_config, env, crash_hook=kill_qemu)
    assert expected in str(failure.value) and not failure.value.user_fault
    assert_nothing_left(node_config, env, job)


def test_a_guest_that_resets_itself_stays_the_users_fault(node_config, env):
    """A kernel that panics into a reset (on_reboot=destroy: libvirt stops QEMU itself) is the image's
    doing: GuestNotReadyError, no drain; the same domain log, read the same way, says so."""
    tiny = node_config.images["tiny"]
    panics = tiny.model_copy(
        update={"cmdline": "console=ttyS0 rdinit=/nonexistent panic=-1", "seed": "cmdline"}
    )
    config = node_config.model_copy(update={"images": {**node_config.images, "panics": panics}})
    job = make_job(309, "panics,vcpus=1,mem=128M")
    with pytest.raises(GuestNotReadyError, match="stopped before it became ready") as failure:
        start_guest(job, config, env)
    assert failure.value.user_fault and "Kernel panic" in str(failure.value)
    assert_nothing_left(config, env, job)


def test_prolog_under_a_hardened_umask_starts_the_guest(node_config, env):
    """slurmd's umask is the site's: with 077 the state directories the prolog makes must still let
    QEMU (another user) reach the guest's files.  Before make_dirs, QEMU could not open the seed."""
    assert not os.path.exists(node_config.state_dir)  # made by the prolog, under this umask
    job = make_job(304)
    old = os.umask(0o077)
    try:
        info = start_guest(job, node_config, env)
        assert info.name == "vc-304-n0"
        assert teardown(job.job_id, node_config, env) is True
    finally:
        os.umask(old)
    assert os.stat(node_config.state_dir).st_mode & 0o777 == 0o755
    assert_nothing_left(node_config, env, job)


def test_guest_never_ready_times_out_with_console_tail(node_config, env):
    from slurm_vc.config import Timeouts

    config = node_config.model_copy(update={"timeouts": Timeouts(ready=15, lock=10)})
    job = make_job(302, "never,vcpus=1,mem=128M")
    with pytest.raises(GuestNotReadyError) as failure:
        start_guest(job, config, env)
    message = str(failure.value)
    assert "not ready after 15 s" in message
    assert "last lines of the guest console" in message
    tail = message.split("last lines of the guest console", 1)[1].splitlines()[1:]
    assert 1 <= len(tail) <= 20  # the tail of what the guest printed, not the whole log
    assert_nothing_left(config, env, job)


def test_missing_kernel_is_the_users_image_fault_and_cleans_up(node_config, env):
    """A direct-kernel-boot image whose kernel is not on this node: ImageError (no drain), not a libvirt
    fault, and whatever the prolog made before the check is gone."""
    from slurm_vc.config import ImageSpec
    from slurm_vc.errors import ImageError

    tiny = node_config.images["tiny"]
    broken = tiny.model_copy(update={"kernel": "/nonexistent/slurm-vc/vmlinuz"})
    assert isinstance(broken, ImageSpec)
    config = node_config.model_copy(update={"images": {**node_config.images, "gone": broken}})
    job = make_job(303, "gone,vcpus=1,mem=128M")
    with pytest.raises(ImageError, match="/nonexistent/slurm-vc/vmlinuz does not exist") as failure:
        start_guest(job, config, env)
    assert failure.value.user_fault
    assert_nothing_left(config, env, job)


def test_libvirtd_restart_while_guest_runs(node_config, env, node_libvirtd):
    job = make_job(303)
    info = start_guest(job, node_config, env)
    try:
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            pid = hv.qemu_pid(info.name)
        node_libvirtd.restart_libvirtd()
        with Hypervisor(node_config.host.libvirt_uri) as hv:  # a new daemon, same guest
            assert hv.list_domains() == [info.name]
            assert hv.is_running(info.name)
            assert hv.qemu_pid(info.name) == pid
    finally:
        assert teardown(job.job_id, node_config, env) is True
    assert_nothing_left(node_config, env, job)


def test_rerun_prolog_replaces_the_previous_guest(node_config, env):
    """A requeued job's prolog on the same node first removes what the last run left."""
    job = make_job(304)
    start_guest(job, node_config, env)
    try:
        info = start_guest(job, node_config, env)
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            assert hv.list_domains() == [info.name]
        assert hugepage_ledger(node_config, job.job_id).nodes[0].asked == 64  # one reservation, not two
    finally:
        teardown(job.job_id, node_config, env)
    assert_nothing_left(node_config, env, job)


def test_agent_readiness_probe(node_config, env):
    """An image whose readiness is the guest agent: ready once qemu-ga answers guest-ping."""
    import shutil as _shutil

    if not _shutil.which("qemu-ga") and not Path("/usr/sbin/qemu-ga").exists():
        pytest.skip("qemu-guest-agent is not installed, so the tiny guest has no agent")
    job = make_job(305, "tinyagent,vcpus=1,mem=128M")
    try:
        info = start_guest(job, node_config, env)
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            assert hv.agent_ping(info.name, timeout=5)
            assert not hv.agent_ping("vc-0-no-such-guest")
    finally:
        teardown(job.job_id, node_config, env)
    assert_nothing_left(node_config, env, job)


def test_libvirtd_restart_during_the_readiness_wait(node_config, env, node_libvirtd):
    """The prolog's libvirt connection dies while it waits: it reconnects and the guest gets ready."""
    job = make_job(306)

    def restart(step):
        if step == "ready":
            node_libvirtd.restart_libvirtd()

    try:
        info = start_guest(job, node_config, env, crash_hook=restart)
        with Hypervisor(node_config.host.libvirt_uri) as hv:
            assert hv.is_running(info.name)
    finally:
        teardown(job.job_id, node_config, env)
    assert_nothing_left(node_config, env, job)


def test_catalog_image_ownership_untouched_while_a_guest_runs(node_config, env, base_disk):
    job = make_job(307, "tinydisk,vcpus=1,mem=128M")
    before = os.stat(base_disk)
    try:
        start_guest(job, node_config, env)
        during = os.stat(base_disk)
    finally:
        teardown(job.job_id, node_config, env)
    assert (during.st_uid, during.st_gid, during.st_mode) == (before.st_uid, before.st_gid, before.st_mode)


def test_an_image_only_qemus_group_can_read_boots(node_config, env, base_disk, share_with_group):
    """A site may share images with QEMU's group only (0640 in a 0750 directory, group of libvirt's
    QEMU user).  The prolog learns QEMU's user from libvirt and lets the guest start, and real QEMU
    does read the image; a directory QEMU cannot search stays the image's fault, caught first."""
    import shutil

    from slurm_vc.errors import ImageError
    from slurm_vc.hypervisor import Hypervisor
    from slurm_vc.qemu_access import UNPRIVILEGED

    with Hypervisor(node_config.host.libvirt_uri) as hypervisor:
        qemu = hypervisor.qemu_user(node_config.host.domain_type)
    assert qemu is not UNPRIVILEGED and qemu.uid != 0  # Debian: libvirt-qemu
    group = min(gid for gid in qemu.gids if gid != 0)
    shared = Path(base_disk).parent.parent / "group-only"
    shared.mkdir()
    try:
        image = shared / "base.qcow2"
        shutil.copyfile(base_disk, image)
        share_with_group(image, group)
        spec = node_config.images["tinydisk"].model_copy(update={"disk": str(image)})
        config = node_config.model_copy(update={"images": {**node_config.images, "grouponly": spec}})
        job = make_job(308, "grouponly,vcpus=1,mem=128M")
        try:
            info = start_guest(job, config, env)
            assert info.name == "vc-308-n0"
            # the identity the check assumed is the one the real QEMU process has
            with Hypervisor(config.host.libvirt_uri) as hypervisor:
                status = Path(f"/proc/{hypervisor.qemu_pid(info.name)}/status").read_text()
            ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}
            assert int(ids["Uid"][0]) == qemu.uid and int(ids["Gid"][0]) in qemu.gids
            assert {int(gid) for gid in ids["Groups"]} | {int(ids["Gid"][0])} == qemu.gids
        finally:
            teardown(job.job_id, config, env)
        assert_nothing_left(config, env, job)

        os.chown(shared, 0, 0)  # now only root may search it: QEMU could not open the image
        with pytest.raises(ImageError, match=f"below {shared}, which QEMU's user") as failure:
            start_guest(job, config, env)
        assert failure.value.user_fault and failure.value.fix == f"chmod o+x {shared}"
        assert_nothing_left(config, env, job)
    finally:
        shutil.rmtree(shared)
