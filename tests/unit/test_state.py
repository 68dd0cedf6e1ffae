"""Per-job state: atomic records, planned-before-created, locking and removal."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import time

import pytest

from slurm_vc import state
from slurm_vc.errors import StateError


def test_records_survive_reopen_in_order(tmp_path):
    with state.locked_job(tmp_path, 42, create=True) as job:
        job.update_meta(node="n1", image="tiny")
        job.plan("hugepages", "42", page_size=2097152)
        job.created("hugepages", "42")
        job.plan("overlay", "/x/vc.qcow2")
    with state.locked_job(tmp_path, 42, create=False) as job:
        assert job.meta == {"node": "n1", "image": "tiny"}
        assert [(r.kind, r.status) for r in job.resources] == [
            ("hugepages", state.CREATED),
            ("overlay", state.PLANNED),
        ]
        assert job.find("hugepages").details == {"page_size": 2097152}
        assert job.find("domain") is None


def test_state_file_is_valid_json_after_every_step(tmp_path):
    with state.locked_job(tmp_path, 7, create=True) as job:
        job.plan("seed", "s")
        data = json.loads((job.dir / state.STATE_FILE).read_text())
        assert data["resources"][0]["status"] == "planned"
        job.created("seed", "s", size=3)
        data = json.loads((job.dir / state.STATE_FILE).read_text())
        expected = {"kind": "seed", "id": "s", "details": {"size": 3}, "status": "created"}
        assert data["resources"][0] == expected
        assert not list(job.dir.glob(".*.tmp"))


def test_plan_twice_updates_instead_of_duplicating(tmp_path):
    with state.locked_job(tmp_path, 1, create=True) as job:
        job.plan("domain", "vc-1-n", uri="a")
        job.plan("domain", "vc-1-n", uri="b")
        assert len(job.resources) == 1
        assert job.resources[0].details == {"uri": "b"}


def test_created_without_plan_is_an_error(tmp_path):
    with state.locked_job(tmp_path, 1, create=True) as job, pytest.raises(StateError, match="never planned"):
        job.created("domain", "vc-1-n")


def test_forget_and_remove(tmp_path):
    with state.locked_job(tmp_path, 5, create=True) as job:
        job.plan("overlay", "o")
        job.forget("overlay", "o")
        job.forget("overlay", "o")  # idempotent
        assert job.resources == []
        job.remove()
    assert state.list_job_ids(tmp_path) == []
    with state.locked_job(tmp_path, 5, create=False) as job:
        assert job is None


def test_job_dir_mode_lets_qemu_traverse_but_not_list(tmp_path):
    old = os.umask(0o077)
    try:
        with state.locked_job(tmp_path, 9, create=True) as job:
            mode = stat.S_IMODE(os.stat(job.dir).st_mode)
    finally:
        os.umask(old)
    assert mode == 0o711


def test_list_job_ids_is_numeric_and_ignores_junk(tmp_path):
    for job_id in (10, 9, 100):
        with state.locked_job(tmp_path, job_id, create=True):
            pass
    (state.jobs_dir(tmp_path) / "not-a-job").mkdir()
    assert state.list_job_ids(tmp_path) == ["9", "10", "100"]


@pytest.mark.parametrize("bad", ["../etc", "12a", "", "-1"])
def test_bad_job_ids_rejected(tmp_path, bad):
    with pytest.raises(StateError):
        state.job_dir(tmp_path, bad)


def test_corrupt_state_is_a_clear_error(tmp_path):
    with state.locked_job(tmp_path, 3, create=True) as job:
        job.plan("seed", "s")
    (state.job_dir(tmp_path, 3) / state.STATE_FILE).write_text("{not json")
    with pytest.raises(StateError, match="unreadable"):
        with state.locked_job(tmp_path, 3, create=False):
            pass


def _hold_lock(state_dir, job_id, ready, release):
    with state.locked_job(state_dir, job_id, create=True):
        ready.set()
        release.wait(10)


def test_lock_excludes_other_processes_and_times_out(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), 11, ready, release))
    holder.start()
    try:
        assert ready.wait(10)
        assert state.is_locked(tmp_path, 11)
        with pytest.raises(StateError, match="locked by another"):
            with state.locked_job(tmp_path, 11, create=False, timeout=0.2):
                pass
    finally:
        release.set()
        holder.join(10)
    assert not state.is_locked(tmp_path, 11)
    with state.locked_job(tmp_path, 11, create=False, timeout=1) as job:
        assert job is not None


def _remove_after_delay(state_dir, job_id, ready):
    with state.locked_job(state_dir, job_id, create=True) as job:
        ready.set()
        time.sleep(0.3)
        job.remove()


def test_waiter_sees_a_directory_removed_while_it_waited(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    remover = ctx.Process(target=_remove_after_delay, args=(str(tmp_path), 12, ready))
    remover.start()
    try:
        assert ready.wait(10)
        with state.locked_job(tmp_path, 12, create=False, timeout=10) as job:
            assert job is None  # the teardown it waited for removed everything
        with state.locked_job(tmp_path, 12, create=True, timeout=10) as job:
            assert job is not None and job.dir.is_dir()
    finally:
        remover.join(10)


def test_is_locked_false_without_state(tmp_path):
    assert not state.is_locked(tmp_path, 99)
    assert state.read_state(tmp_path, 99) is None


def test_make_dirs_ignores_the_umask_and_leaves_existing_directories(tmp_path):
    existing = tmp_path / "site"
    existing.mkdir(mode=0o750)
    os.chmod(existing, 0o750)
    old = os.umask(0o077)
    try:
        state.make_dirs(existing / "a" / "b", 0o755)
        state.make_dirs(existing / "a" / "b", 0o755)  # again: nothing to make
    finally:
        os.umask(old)
    assert os.stat(existing).st_mode & 0o777 == 0o750
    assert os.stat(existing / "a").st_mode & 0o777 == 0o755
    assert os.stat(existing / "a" / "b").st_mode & 0o777 == 0o755
