"""The bounded flock shared by the hugepage pools and the isolation rules."""

from __future__ import annotations

import fcntl
import os

import pytest

from slurm_vc.errors import StateError
from slurm_vc.filelock import flock_until, locked_file


def test_locked_file_creates_its_directory_and_excludes_others(tmp_path):
    path = str(tmp_path / "run" / "x.lock")
    with locked_file(path, "test lock", 1.0):
        assert os.path.isfile(path)
        other = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(path, os.O_RDWR)  # released when the block ends
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_a_lock_held_too_long_is_a_state_error_naming_it(tmp_path):
    path = str(tmp_path / "x.lock")
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(StateError, match=r"^test lock is held by another process for more than 0.05 s"):
            with locked_file(path, "test lock", 0.05):
                pass
    finally:
        os.close(holder)


def test_an_unopenable_lock_file_is_a_state_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=r"^cannot open the test lock: "):
        with locked_file(str(blocker / "x.lock"), "test lock", 1.0):
            pass


def test_flock_on_a_bad_descriptor_is_a_state_error(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    with pytest.raises(StateError, match=r"^cannot take the test lock: "):
        flock_until(fd, "test lock", 1.0)
