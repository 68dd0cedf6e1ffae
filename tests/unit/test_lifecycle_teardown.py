"""Teardown order, idempotence and partial failure, with the actuators replaced by recorders."""

from __future__ import annotations

import pytest

from slurm_vc import lifecycle, state
from slurm_vc.config import config_from_mapping
from slurm_vc.errors import HypervisorError


@pytest.fixture
def config(tmp_path):
    return config_from_mapping({"state_dir": str(tmp_path / "state")})


@pytest.fixture
def undone(monkeypatch):
    calls: list[tuple[str, str]] = []

    def fake_undo(kind, id, details, job_state, config, env):
        if details.get("fail"):
            raise HypervisorError("libvirt at qemu:///system: cannot connect")
        calls.append((kind, id))

    monkeypatch.setattr(lifecycle, "_undo", fake_undo)
    return calls


def record(config, job_id, resources):
    with state.locked_job(config.state_dir, job_id, create=True) as job:
        for kind, id, status, details in resources:
            job.plan(kind, id, **details)
            if status == state.CREATED:
                job.created(kind, id)


def test_teardown_undoes_newest_first_planned_included(config, undone):
    record(
        config,
        1,
        [
            ("isolation", "1", "created", {}),
            ("hugepages", "1", "created", {}),
            ("overlay", "/o", "created", {}),
            ("domain", "vc-1-n", "planned", {}),  # crashed between createXML and recording it
        ],
    )
    assert lifecycle.teardown(1, config) is True
    assert undone == [("domain", "vc-1-n"), ("overlay", "/o"), ("hugepages", "1"), ("isolation", "1")]
    assert state.list_job_ids(config.state_dir) == []
    assert lifecycle.teardown(1, config) is False  # second run: nothing left
    assert lifecycle.teardown(77, config) is False  # a job this node never saw


def test_failed_undo_keeps_the_rest_for_the_next_attempt(config, undone):
    record(config, 2, [("hugepages", "2", "created", {}), ("domain", "vc-2-n", "created", {"fail": True})])
    with pytest.raises(HypervisorError):
        lifecycle.teardown(2, config)
    left = state.read_state(config.state_dir, 2)
    assert [r.kind for r in left.resources] == ["hugepages", "domain"]
    assert undone == []


def test_unknown_resource_kind_is_a_state_error(config):
    from slurm_vc.errors import StateError

    record(config, 3, [("mystery", "x", "created", {})])
    with pytest.raises(StateError, match="unknown resource kind 'mystery'"):
        lifecycle.teardown(3, config)


def test_a_failing_undo_of_any_kind_keeps_the_original_error(config, monkeypatch):
    """A user fault stays a user fault (no drain) when cleaning up then fails with a plain OSError."""
    from slurm_vc.errors import ImageError

    def start(job, config, env, job_state, hook):
        job_state.plan("seed", "/nonexistent/seed.iso")
        job_state.created("seed", "/nonexistent/seed.iso")
        raise ImageError("image 'tiny': /images/tiny.qcow2 does not exist")

    def undo(kind, id, details, job_state, config, env):
        raise PermissionError(13, "Permission denied", id)

    monkeypatch.setattr(lifecycle, "_start", start)
    monkeypatch.setattr(lifecycle, "_undo", undo)
    job = lifecycle.NodeJob(
        job_id=9, node="n1", nodes=("n1",), cpus=(0,), memory=1 << 30, vcluster="tiny", user="u", uid=0, gid=0
    )
    with pytest.raises(ImageError) as info:
        lifecycle.start_guest(job, config)
    assert info.value.user_fault
    assert "does not exist (and cleaning up failed: PermissionError:" in str(info.value)
    left = state.read_state(config.state_dir, 9)
    assert [r.kind for r in left.resources] == ["seed"]  # still recorded: the epilog or gc retries


def test_remove_seed_that_cannot_be_removed_is_a_host_error(tmp_path):
    from slurm_vc.errors import HostError
    from slurm_vc.seed import remove_seed

    remove_seed(str(tmp_path / "missing.iso"))  # idempotent
    (tmp_path / "dir.iso").mkdir()  # unlink(2) of a directory fails: EISDIR
    with pytest.raises(HostError, match="cannot remove the guest seed"):
        remove_seed(str(tmp_path / "dir.iso"))
