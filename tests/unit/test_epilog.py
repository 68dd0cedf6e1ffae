"""The epilog's entry point with its two steps replaced: both always run, the first failure decides."""

from __future__ import annotations

import pytest

from slurm_vc import jobenv, lifecycle
from slurm_vc.commands import epilog as epilog_cmd
from slurm_vc.config import config_from_mapping
from slurm_vc.errors import HypervisorError
from slurm_vc.slurm import job_id_and_node_from_env


@pytest.fixture
def steps(tmp_path, monkeypatch):
    config = config_from_mapping({"state_dir": str(tmp_path / "state")})
    monkeypatch.setattr("slurm_vc.config.load_config", lambda path=None: config)
    calls: dict[str, object] = {}
    monkeypatch.setattr(jobenv, "remove", lambda state_dir, job: calls.setdefault("remove", job))
    monkeypatch.setattr(lifecycle, "run_epilog", lambda job, config: calls.setdefault("teardown", job))
    return calls, monkeypatch


def test_teardown_runs_even_when_the_job_environment_cannot_be_removed(steps, capsys):
    calls, monkeypatch = steps

    def remove(state_dir, job):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jobenv, "remove", remove)
    assert epilog_cmd.epilog(7, "n1") == 1
    assert calls == {"teardown": 7}
    assert "removing the job environment failed: [Errno 13] Permission denied" in capsys.readouterr().err


def test_a_failed_teardown_exits_with_its_code(steps):
    calls, monkeypatch = steps

    def teardown(job, config):
        raise HypervisorError("libvirt at qemu:///system: cannot connect")

    monkeypatch.setattr(lifecycle, "run_epilog", teardown)
    assert epilog_cmd.epilog(7, "n1") == HypervisorError.exit_code
    assert calls == {"remove": 7}


def test_success_is_zero(steps):
    calls, _ = steps
    assert epilog_cmd.epilog(7, "n1") == 0
    assert calls == {"remove": 7, "teardown": 7}


def test_the_epilog_needs_only_the_job_id_and_the_node():
    assert job_id_and_node_from_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n3"}) == (42, "n3")
