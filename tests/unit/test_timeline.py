"""slurm_vc.timeline (pure phase table) and the file-watching half in slurm_vc.jobwatch."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from slurm_vc import jobwatch, timeline
from slurm_vc.timeline import JobTimes, NodeTimes, Range

T0 = 1_800_000_000.0


def three_nodes() -> JobTimes:
    nodes = tuple(
        NodeTimes(
            f"node{i}",
            prolog_start=T0 + 0.30 + 0.02 * i,
            guest_started=T0 + 0.90 + 0.05 * i,
            guest_ready=T0 + 5.0 + 0.3 * i,
            teardown_done=T0 + 12.0 + 0.1 * i,
            steps={"plan": 0.05, "domain": 0.30, "ready": 4.1 + 0.25 * i},
        )
        for i in range(3)
    )
    return JobTimes(
        "42",
        submit=T0,
        queued=T0 + 0.01,
        allocated=T0 + 0.03,
        script_start=T0 + 6.1,
        script_end=T0 + 11.0,
        nodes=nodes,
    )


def row(rows, key):
    return next(r for r in rows if r.key == key)


# -------------------------------------------------------------------------------- phase rows


def test_rows_follow_milestone_order_with_offsets_from_submit():
    rows = timeline.phase_rows(three_nodes())
    assert [r.key for r in rows] == [
        "submit",
        "queued",
        "allocated",
        "prolog_start",
        "guest_started",
        "guest_ready",
        "script_start",
        "script_end",
        "teardown_done",
    ]
    assert row(rows, "submit").duration is None
    ready = row(rows, "guest_ready")
    assert ready.at.lo == pytest.approx(5.0)
    assert ready.at.hi == pytest.approx(5.6)
    assert ready.nodes == 3
    assert row(rows, "script_start").nodes == 0


def test_per_node_to_per_node_phase_is_measured_node_by_node():
    rows = timeline.phase_rows(three_nodes())
    boot = row(rows, "guest_ready").duration
    # node i: (5.0 + 0.3 i) - (0.90 + 0.05 i) = 4.1 + 0.25 i
    assert boot.lo == pytest.approx(4.10)
    assert boot.hi == pytest.approx(4.60)


def test_job_wide_milestone_after_per_node_waits_for_the_last_node():
    rows = timeline.phase_rows(three_nodes())
    gate = row(rows, "script_start").duration
    assert gate.lo == gate.hi == pytest.approx(6.1 - 5.6)


def test_per_node_milestone_after_job_wide_one_starts_from_it():
    rows = timeline.phase_rows(three_nodes())
    teardown = row(rows, "teardown_done").duration
    assert teardown.lo == pytest.approx(1.0)
    assert teardown.hi == pytest.approx(1.2)
    prolog = row(rows, "prolog_start").duration
    assert prolog.lo == pytest.approx(0.27)
    assert prolog.hi == pytest.approx(0.31)


def test_missing_milestones_are_skipped_and_the_next_phase_spans_them():
    job = JobTimes("7", submit=T0, script_start=T0 + 2.5)  # a job without --vcluster, no ctld log
    rows = timeline.phase_rows(job)
    assert [r.key for r in rows] == ["submit", "script_start"]
    assert rows[1].since == "submit"
    assert rows[1].duration == Range(2.5, 2.5)
    text = timeline.format_table(job)
    assert "not observed: queued, nodes allocated, prolog start" in text


def test_node_missing_one_milestone_does_not_break_the_others():
    job = JobTimes(
        "8",
        submit=T0,
        nodes=(NodeTimes("a", prolog_start=T0 + 1, guest_ready=T0 + 3), NodeTimes("b", prolog_start=T0 + 2)),
    )
    rows = timeline.phase_rows(job)
    ready = row(rows, "guest_ready")
    assert ready.nodes == 1
    assert ready.duration == Range(2.0, 2.0)  # only node a had both


# -------------------------------------------------------------------------------- totals, table


def test_time_to_cluster_and_control_plane_overhead():
    job = three_nodes()
    assert timeline.time_to_cluster(job) == pytest.approx(6.1)
    assert timeline.guest_boot(job) == Range(4.1, 4.6)
    # The slowest guest's boot is what the job had to wait for; the rest is overhead.
    assert timeline.control_plane_overhead(job) == pytest.approx(6.1 - 4.6)


def test_breakdown_follows_the_last_ready_node():
    job = three_nodes()
    assert timeline.gating_node(job).node == "node2"
    parts = timeline.breakdown(job)
    assert parts == pytest.approx({"total": 6.1, "boot": 4.6, "domain": 0.3, "rest": 1.2})
    assert timeline.breakdown(JobTimes("1", submit=T0, script_start=T0 + 1)) is None


def test_overhead_unknown_without_script_start_or_boot():
    assert timeline.control_plane_overhead(JobTimes("1", submit=T0)) is None
    assert timeline.control_plane_overhead(JobTimes("1", submit=T0, script_start=T0 + 1)) is None


def test_prolog_steps_in_lifecycle_order_with_unknown_steps_last():
    job = JobTimes(
        "9",
        submit=T0,
        nodes=(
            NodeTimes("a", steps={"ready": 4.0, "plan": 0.1, "extra": 0.5}),
            NodeTimes("b", steps={"ready": 5.0, "plan": 0.2}),
        ),
    )
    steps = timeline.prolog_step_rows(job)
    assert [name for name, _ in steps] == ["plan", "ready", "extra"]
    assert dict(steps)["ready"] == Range(4.0, 5.0)
    assert dict(steps)["extra"] == Range(0.5, 0.5)


def test_format_table_shows_every_phase_and_ranges():
    text = timeline.format_table(three_nodes())
    lines = text.splitlines()
    assert lines[0].startswith("job 42: per-phase timings on 3 nodes")
    assert any("guest started -> guests ready" in line and "4.10 .. 4.60 s" in line for line in lines)
    assert any("guests ready -> script start" in line and "0.50 s" in line for line in lines)
    assert any(line.strip().startswith("submit ") and "0.00 s" in line for line in lines)
    assert "time to cluster (submit -> script start): 6.10 s" in text
    # node2 was ready last: its boot 4.60 s and domain start 0.30 s; the rest 6.10 - 4.90.
    assert "= guest boot 4.60 s + libvirt domain start 0.30 s + Slurm and slurm-vc 1.20 s" in text
    assert "not observed" not in text


def test_range_format():
    assert Range(1.0, 1.0).format() == "1.00 s"
    assert Range(1.0, 1.004).format() == "1.00 s"
    assert Range(1.0, 2.5).format(signed=True) == "+1.00 .. +2.50 s"
    assert Range.of([]) is None
    assert Range.of([3.0, 1.0, 2.0]) == Range(1.0, 3.0)


def test_median():
    assert timeline.median([]) is None
    assert timeline.median([3.0, 1.0, 2.0]) == 2.0


# -------------------------------------------------------------------------------- parsing


def test_parse_script_marks_takes_first_start_and_last_end():
    text = (
        "hello\nSCRIPT_START 1800000006.100\nSCRIPT_START 99\n0: x\n"
        "SCRIPT_END 1800000011.5\nSCRIPT_END 1800000012\n"
    )
    assert timeline.parse_script_marks(text) == {"script_start": 1800000006.1, "script_end": 1800000012.0}
    assert timeline.parse_script_marks("SCRIPT_START soon\n") == {}


def test_ctld_events_match_the_exact_job_and_take_the_last_allocation():
    def stamp(seconds: float) -> str:
        return datetime.fromtimestamp(T0 + seconds).isoformat(timespec="milliseconds")

    log = "\n".join(
        [
            f"[{stamp(0)}] _slurm_rpc_submit_batch_job: JobId=150 InitPrio=1 usec=900",
            f"[{stamp(0.01)}] _slurm_rpc_submit_batch_job: JobId=15 InitPrio=1 usec=900",
            f"[{stamp(0.03)}] sched: Allocate JobId=15 NodeList=node[1-3] #CPUs=3 Partition=vc",
            f"[{stamp(0.05)}] sched: Allocate JobId=150 NodeList=node1 #CPUs=1 Partition=vc",
            f"[{stamp(3.0)}] sched: Allocate JobId=15 NodeList=node[1-3] #CPUs=3 Partition=vc",
            f"[{stamp(9.0)}] _job_complete: JobId=15 WEXITSTATUS 0",
            f"[{stamp(9.0)}] _job_complete: JobId=15 done",
            "garbage line",
        ]
    )
    events = timeline.ctld_events(log, 15)
    assert events["submit"] == pytest.approx(T0 + 0.01, abs=1e-3)
    assert events["allocated"] == pytest.approx(T0 + 3.0, abs=1e-3)
    assert events["job_end"] == pytest.approx(T0 + 9.0, abs=1e-3)
    assert timeline.ctld_events(log, 150)["allocated"] == pytest.approx(T0 + 0.05, abs=1e-3)
    assert timeline.ctld_events(log, 1) == {}
    backfill = f"[{stamp(4.0)}] sched/backfill: _start_job: Started JobId=16 in vc on node1"
    assert timeline.ctld_events(backfill, 16)["allocated"] == pytest.approx(T0 + 4.0, abs=1e-3)


def test_node_times_from_lifecycle_meta_and_published_view():
    meta = {
        "started_at": T0 + 0.5,
        "ready_at": T0 + 5.0,
        "timings": {"plan": 0.1, "isolation": 0.01, "domain": 0.4, "ready": 4.0, "bogus": "x"},
    }
    local = {"started_at": T0 + 0.3, "ready_at": T0 + 5.0, "state": "ready"}
    node = timeline.node_times("node1", meta, local, teardown_done=T0 + 12)
    assert node.prolog_start == T0 + 0.3  # the published "starting" comes first
    assert node.guest_ready == T0 + 5.0
    assert node.guest_started == pytest.approx(T0 + 1.0)  # ready_at - timings["ready"]
    assert node.teardown_done == T0 + 12
    assert "bogus" not in node.steps


def test_node_times_prefers_the_lifecycle_ready_clock():
    # The published ready_at is started_at + seconds to ready (boot only): earlier than the real one.
    meta = {"started_at": T0 + 0.5, "ready_at": T0 + 9.0, "timings": {"domain": 3.0, "ready": 5.0}}
    local = {"started_at": T0 + 0.3, "ready_at": T0 + 5.3}
    node = timeline.node_times("node1", meta, local)
    assert node.guest_ready == T0 + 9.0
    assert node.guest_started == pytest.approx(T0 + 4.0)
    fallback = timeline.node_times("node1", {}, local)
    assert fallback.guest_ready == T0 + 5.3


def test_node_times_guest_started_from_steps_before_ready():
    meta = {"started_at": T0 + 0.5, "timings": {"plan": 0.1, "isolation": 0.01, "seed": 0.02, "domain": 0.4}}
    node = timeline.node_times("node1", meta, None)
    assert node.guest_started == pytest.approx(T0 + 0.93)
    assert node.guest_ready is None
    empty = timeline.node_times("node2")
    assert (empty.prolog_start, empty.guest_started, empty.guest_ready) == (None, None, None)


# -------------------------------------------------------------------------------- jobwatch (files only)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def write_records(state_dir, job_id, meta, local):
    job_dir = state_dir / "jobs" / job_id
    env_dir = state_dir / "jobenv" / job_id
    job_dir.mkdir(parents=True)
    env_dir.mkdir(parents=True)
    (job_dir / "state.json").write_text(json.dumps({"version": 1, "meta": meta, "resources": []}))
    (env_dir / "guests.json").write_text(json.dumps({"local": local}))
    return job_dir, env_dir


def test_watcher_keeps_records_and_notes_teardown(tmp_path):
    import shutil

    dirs = {"node1": tmp_path / "n1", "node2": tmp_path / "n2"}
    clock = FakeClock()
    watcher = jobwatch.JobWatcher(dirs, 77, clock=clock)
    watcher.poll_once()
    assert watcher.node_times() == ()
    job_dir, env_dir = write_records(dirs["node1"], "77", {"started_at": T0 + 1, "ready_at": T0 + 4}, {})
    clock.now = T0 + 2
    watcher.poll_once()
    assert watcher.records["node1"].first_seen == T0 + 2
    assert not watcher.torn_down()
    shutil.rmtree(env_dir)  # the epilog removes the jobenv first: not done yet
    clock.now = T0 + 9
    watcher.poll_once()
    assert watcher.records["node1"].teardown_done is None
    shutil.rmtree(job_dir)
    clock.now = T0 + 10
    watcher.poll_once()
    clock.now = T0 + 11
    watcher.poll_once()
    assert watcher.torn_down()
    (node,) = watcher.node_times()
    assert (node.node, node.prolog_start, node.guest_ready, node.teardown_done) == (
        "node1",
        T0 + 1,
        T0 + 4,
        T0 + 10,
    )
    again = {
        r["node"]: jobwatch.NodeRecord.from_json(r)
        for r in json.loads(json.dumps(watcher.to_json()))["nodes"]
    }
    assert again["node1"].times() == node


def test_watcher_run_returns_when_job_finished_and_torn_down(tmp_path):
    dirs = {"node1": tmp_path / "n1"}
    watcher = jobwatch.JobWatcher(dirs, 5)
    # No records ever (a plain job): finished + grace ends the wait.
    assert watcher.run(lambda: True, timeout=5, grace=0.0)
    # Records that never go away: the wait times out.
    write_records(dirs["node1"], "6", {}, {})
    stuck = jobwatch.JobWatcher(dirs, 6)
    assert not stuck.run(lambda: True, timeout=0.2, grace=0.0)


def test_job_times_assembles_every_source():
    records = {
        "node1": jobwatch.NodeRecord("node1", meta={"ready_at": T0 + 4}, first_seen=T0 + 1),
        "node2": jobwatch.NodeRecord("node2"),  # never seen: not part of the job
    }
    stamp = datetime.fromtimestamp(T0 + 0.04).isoformat(timespec="milliseconds")
    job = jobwatch.job_times(
        12,
        T0,
        records,
        output_text=f"SCRIPT_START {T0 + 5}\nSCRIPT_END {T0 + 6}\n",
        ctld_log_text=(
            f"[{stamp}] _slurm_rpc_submit_batch_job: JobId=12 InitPrio=1 usec=9\n"
            f"[{stamp}] sched: Allocate JobId=12 NodeList=node1 #CPUs=1 Partition=vc\n"
        ),
    )
    assert job.queued == pytest.approx(T0 + 0.04, abs=1e-3)
    assert job.allocated == pytest.approx(T0 + 0.04, abs=1e-3)
    assert (job.script_start, job.script_end) == (T0 + 5, T0 + 6)
    assert [n.node for n in job.nodes] == ["node1"]


def test_pool_growth():
    assert jobwatch.pool_growth({"hugepages-2048kB": 10}, {"hugepages-2048kB": 14, "hugepages-1G": 1}) == {
        "hugepages-2048kB": 4
    }
    assert jobwatch.pool_growth({"hugepages-2048kB": 10}, {"hugepages-2048kB": 8}) == {}
