"""gc's pass logic with the node's listing and actuators replaced (the real ones: tests/integration)."""

from __future__ import annotations

from slurm_vc.commands import gc
from slurm_vc.config import config_from_mapping


def test_one_job_failing_does_not_stop_the_pass(tmp_path, monkeypatch):
    """An unexpected error (not a VcError) reaping job 5 is reported; job 6 is still reaped."""
    config = config_from_mapping({"state_dir": str(tmp_path / "state")})
    candidates = gc.Candidates(
        state_dirs=frozenset(), domains={}, ledgers=frozenset(), tables=frozenset(), jobenvs=frozenset({5, 6})
    )
    monkeypatch.setattr(gc, "list_candidates", lambda config, node, env: candidates)
    removed = []

    def remove_jobenv(config, job):
        if job == 5:
            raise PermissionError(13, "Permission denied")
        removed.append(job)

    monkeypatch.setattr(gc, "_remove_jobenv", remove_jobenv)
    report = gc.collect(config, lambda: set(), env=object(), min_age=0)
    assert removed == [6]
    assert report.reaped == ["job 6: job environment removed"]
    assert report.errors == ["job 5: job environment removed: PermissionError: [Errno 13] Permission denied"]
