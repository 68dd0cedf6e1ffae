"""slurm-vc gc on a real private libvirtd: reaps dead jobs, leaves live and in-flight ones alone."""

from __future__ import annotations

import multiprocessing
import shutil
import threading

import pytest

from slurm_vc import state
from slurm_vc.commands.gc import collect
from slurm_vc.errors import SlurmError
from slurm_vc.hypervisor import Hypervisor
from slurm_vc.lifecycle import Environment, NodeJob, start_guest, teardown
from slurm_vc.netdev import isolated_jobs

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def make_job(job_id: int) -> NodeJob:
    return NodeJob(
        job_id=job_id,
        node="n0",
        nodes=("n0",),
        cpus=(0, 1),
        memory=512 * MIB,
        vcluster="tiny,vcpus=1,mem=128M",
    )


def ledger(config, job_id: int):
    """The job's hugepage ledger or None (the global pool size is not ours to assert on)."""
    from slurm_vc.hugepages import HugepagePool

    return HugepagePool.from_config(config).ledger(str(job_id))


def domains(config) -> list[str]:
    with Hypervisor(config.host.libvirt_uri) as hv:
        return hv.list_domains()


@pytest.fixture
def env(node_netns) -> Environment:
    return Environment(netns=node_netns)


def test_gc_reaps_dead_jobs_and_spares_live_ones(node_config, env):
    dead, alive = make_job(401), make_job(402)
    start_guest(dead, node_config, env)
    start_guest(alive, node_config, env)
    try:
        # A fresh job is spared while its state is younger than min_age, even though Slurm forgot it.
        report = collect(node_config, lambda: {402}, env=env, min_age=3600)
        assert report.reaped == [] and any("401" in line for line in report.skipped)
        assert domains(node_config) == ["vc-401-n0", "vc-402-n0"]

        report = collect(node_config, lambda: {402}, env=env, min_age=0)
        assert report.errors == []
        assert report.reaped == ["job 401: torn down from its state"]
        assert domains(node_config) == ["vc-402-n0"]
        assert state.list_job_ids(node_config.state_dir) == ["402"]
        assert 401 not in isolated_jobs(netns=env.netns)
        assert ledger(node_config, 401) is None and ledger(node_config, 402) is not None
    finally:
        teardown(alive.job_id, node_config, env)
        teardown(dead.job_id, node_config, env)
    assert ledger(node_config, 402) is None


def test_gc_reaps_orphans_without_state(node_config, env):
    """A guest, ledger and isolation table whose state directory vanished are still found by job id."""
    job = make_job(403)
    start_guest(job, node_config, env)
    shutil.rmtree(state.job_dir(node_config.state_dir, job.job_id))
    report = collect(node_config, lambda: set(), env=env, min_age=0)
    assert report.errors == []
    assert sorted(report.reaped) == [
        "guest vc-403-n0: destroyed (no state)",
        "job 403: hugepages released (no state)",
        "job 403: isolation rules removed (no state)",
    ]
    assert domains(node_config) == []
    assert 403 not in isolated_jobs(netns=env.netns)
    assert ledger(node_config, job.job_id) is None
    # A second pass finds nothing.
    assert collect(node_config, lambda: set(), env=env, min_age=0).reaped == []


def test_gc_reaps_nothing_when_slurm_cannot_be_asked(node_config, env):
    job = make_job(404)
    start_guest(job, node_config, env)
    try:

        def slurm_down() -> set[int]:
            raise SlurmError("squeue: error: slurm_load_jobs error: Unable to contact slurm controller")

        with pytest.raises(SlurmError):
            collect(node_config, slurm_down, env=env, min_age=0)
        assert domains(node_config) == ["vc-404-n0"]
    finally:
        teardown(job.job_id, node_config, env)


def _prolog_child(job, config, env, at_ready, release):
    def hook(step):
        if step == "ready":
            at_ready.set()
            release.wait(60)

    start_guest(job, config, env, crash_hook=hook)


def test_gc_never_touches_a_prolog_in_flight(node_config, env):
    """gc running during a prolog (even with a stale live set that lacks the job) skips the locked job."""
    job = make_job(405)
    context = multiprocessing.get_context("fork")
    at_ready, release = context.Event(), context.Event()
    prolog = context.Process(target=_prolog_child, args=(job, node_config, env, at_ready, release))
    prolog.start()
    try:
        assert at_ready.wait(60), "the prolog never reached the ready step"
        # The domain is running and recorded; the prolog still holds the lock.
        report = collect(node_config, lambda: set(), env=env, min_age=0)
        assert report.reaped == []
        assert any("locked" in line for line in report.skipped)
        assert domains(node_config) == ["vc-405-n0"]
    finally:
        release.set()
        prolog.join(120)
    assert prolog.exitcode == 0
    try:
        assert domains(node_config) == ["vc-405-n0"]
    finally:
        teardown(job.job_id, node_config, env)


def test_gc_and_epilog_race_cleanly(node_config, env):
    """gc and the epilog on the same dead job at once: both succeed, everything is gone once."""
    job = make_job(406)
    start_guest(job, node_config, env)
    errors: list[BaseException] = []

    def epilog():
        try:
            teardown(job.job_id, node_config, env)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    thread = threading.Thread(target=epilog)
    thread.start()
    report = collect(node_config, lambda: set(), env=env, min_age=0)
    thread.join(60)
    assert errors == [] and report.errors == []
    assert domains(node_config) == []
    assert state.list_job_ids(node_config.state_dir) == []
    assert ledger(node_config, job.job_id) is None


def test_gc_command_line(node_config, env, monkeypatch, capsys):
    """`slurm-vc gc`: Slurm's live set comes from slurm_vc.slurm; --dry-run reaps nothing."""
    import slurm_vc.config
    import slurm_vc.slurm
    from slurm_vc.cli import main

    job = make_job(407)
    start_guest(job, node_config, env)
    try:
        monkeypatch.setattr(slurm_vc.config, "load_config", lambda path=None: node_config)
        monkeypatch.setattr(slurm_vc.slurm, "live_job_ids", lambda node=None: set())
        assert main(["gc", "--dry-run", "--min-age", "0"]) == 0
        assert "reaped: (dry run) job 407: torn down from its state" in capsys.readouterr().out
        assert domains(node_config) == ["vc-407-n0"]

        def slurm_down(node=None):
            raise SlurmError("squeue: cannot contact the controller")

        monkeypatch.setattr(slurm_vc.slurm, "live_job_ids", slurm_down)
        assert main(["gc", "--min-age", "0"]) == 9  # EXIT_SLURM, nothing reaped
        assert domains(node_config) == ["vc-407-n0"]
    finally:
        teardown(job.job_id, node_config, env)
