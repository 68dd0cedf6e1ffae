"""The job-side view (slurm_vc.jobenv), the job key (slurm_vc.jobkey) and the prolog/TaskProlog commands."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from slurm_vc import config as site_config
from slurm_vc import jobenv, jobkey, network
from slurm_vc.commands import prolog as prolog_cmd
from slurm_vc.commands import task_prolog
from slurm_vc.errors import ConfigError, HostError, HypervisorError, PlacementError, StateError, UsageError
from slurm_vc.slurm import JobFacts

ME = (os.getuid(), os.getgid())


def make_view(job_id: int = 42, node: str = "n2") -> jobenv.JobView:
    settings = site_config.NetworkSettings(subnet="10.224.0.0/16", hostname_format="vc{job}-{index}")
    net = network.job_network(job_id, ["n1", "n2", "n3"], settings, {"n1": 2, "n2": 4, "n3": 2})
    return jobenv.JobView(
        job_id=job_id,
        node=node,
        user="alice",
        image="tiny",
        login_user="root",
        guests=jobenv.guest_entries(net.guests),
        local=jobenv.LocalState(state=jobenv.READY, started_at=100.0, ready_at=105.5),
    )


def test_constants_agree_with_their_sources():
    assert jobenv.HOSTFILE_FORMATS == network.HOSTFILE_FORMATS
    assert site_config.SiteConfig().state_dir == "/var/lib/slurm-vc"  # state_dir_from_file's default


def test_publish_load_roundtrip_and_permissions(tmp_path):
    view = make_view()
    key = jobkey.job_key(b"s" * 32, 42)
    directory = jobenv.publish(tmp_path, view, *ME, key.private_openssh, key.public_openssh)
    assert directory == tmp_path / "jobenv" / "42"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "id_ed25519").stat().st_mode) == 0o600
    assert (directory / "id_ed25519").stat().st_uid == ME[0]
    loaded = jobenv.load(directory)
    assert loaded.guests == view.guests
    assert loaded.local.seconds_to_ready == 5.5
    assert loaded.local_guest.hostname == "vc42-1"
    assert loaded.key_path == str(directory / "id_ed25519")
    assert (directory / "hostfile").read_text() == "vc42-0 slots=2\nvc42-1 slots=4\nvc42-2 slots=2\n"
    assert (directory / "hostfile.mpich").read_text() == "vc42-0:2\nvc42-1:4\nvc42-2:2\n"
    ssh_config = (directory / "ssh_config").read_text()
    assert "Host vc42-0 vc42-0.vc 10.224." in ssh_config
    assert f"IdentityFile {directory / 'id_ed25519'}" in ssh_config
    # Publishing again (the prolog updates the state) keeps the key and replaces the table.
    view.local.state = jobenv.FAILED
    jobenv.publish(tmp_path, view, *ME)
    assert jobenv.load(directory).local.state == jobenv.FAILED
    assert (directory / "id_ed25519").read_bytes() == key.private_openssh
    assert jobenv.published_job_ids(tmp_path) == ["42"]
    assert jobenv.remove(tmp_path, 42) is True
    assert jobenv.remove(tmp_path, 42) is False
    assert jobenv.published_job_ids(tmp_path) == []


def test_publish_refuses_a_symlinked_job_dir(tmp_path):
    (tmp_path / "jobenv").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "jobenv" / "42").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StateError, match="symbolic link"):
        jobenv.publish(tmp_path, make_view(), *ME)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_hostfiles_match_network_module():
    view = make_view()
    settings = site_config.NetworkSettings(subnet="10.224.0.0/16")
    net = network.job_network(42, ["n1", "n2", "n3"], settings, {"n1": 2, "n2": 4, "n3": 2})
    for fmt in jobenv.HOSTFILE_FORMATS:
        assert jobenv.render_hostfile(view, fmt) == network.hostfile(net, fmt)
    with pytest.raises(UsageError):
        jobenv.render_hostfile(view, "slurm")


def test_task_prolog_lines():
    view = make_view()
    view.directory = "/var/lib/slurm-vc/jobenv/42"
    lines = dict(line.removeprefix("export ").split("=", 1) for line in jobenv.task_prolog_lines(view))
    assert lines["VC_HOSTS"] == "vc42-0,vc42-1,vc42-2"
    assert lines["VC_IPS"].count(",") == 2
    assert lines["VC_LOCAL_GUEST"] == "vc42-1"
    assert lines["VC_HOSTFILE"] == "/var/lib/slurm-vc/jobenv/42/hostfile"
    assert lines["VC_SSH_KEY"] == "/var/lib/slurm-vc/jobenv/42/id_ed25519"
    assert lines["VC_JOB_DIR"] == "/var/lib/slurm-vc/jobenv/42"
    assert all(" " not in value for value in lines.values())


def test_guest_lookup():
    view = make_view()
    assert view.guest("0").node == "n1"
    assert view.guest("n3").index == 2
    assert view.guest("vc42-1").node == "n2"
    with pytest.raises(UsageError, match="no guest 'n9'"):
        view.guest("n9")


def test_load_errors(tmp_path):
    with pytest.raises(StateError, match="no virtual cluster on this node"):
        jobenv.load(tmp_path)
    (tmp_path / "guests.json").write_text('{"version": 99}')
    with pytest.raises(StateError, match="version 99"):
        jobenv.load(tmp_path)
    (tmp_path / "guests.json").write_text('{"version": 1, "job_id": 1}')
    with pytest.raises(StateError, match="malformed"):
        jobenv.load(tmp_path)
    for not_an_object in ("[1, 2]", '"text"', "null"):
        (tmp_path / "guests.json").write_text(not_an_object)
        with pytest.raises(StateError, match="malformed"):
            jobenv.load(tmp_path)
    (tmp_path / "guests.json").write_text(
        '{"version": 1, "job_id": 1, "node": "n", "guests": [1], "local": []}'
    )
    with pytest.raises(StateError, match="malformed"):
        jobenv.load(tmp_path)


def test_find_job_dir_and_state_dir(tmp_path):
    assert jobenv.find_job_dir({"VC_JOB_DIR": "/x"}) == "/x"
    assert jobenv.find_job_dir({"SLURM_JOB_ID": "7"}, state_dir="/s") == "/s/jobenv/7"
    with pytest.raises(UsageError, match="not inside a Slurm job"):
        jobenv.find_job_dir({})
    toml = tmp_path / "vc.toml"
    toml.write_text('state_dir = "/srv/vc"\n[host]\ndomain_type = "qemu"\n')
    assert jobenv.state_dir_from_file(str(toml)) == "/srv/vc"
    toml.write_text('[host]\ndomain_type = "qemu"\n')
    assert jobenv.state_dir_from_file(str(toml)) == "/var/lib/slurm-vc"
    with pytest.raises(ConfigError, match="configuration file not found"):  # the admin's: exit 3
        jobenv.state_dir_from_file(str(tmp_path / "missing.toml"))
    toml.write_text('state_dir = "relative/dir"\n')
    with pytest.raises(ConfigError, match="key 'state_dir': must be an absolute path"):
        jobenv.state_dir_from_file(str(toml))


# --------------------------------------------------------------------------- the job key


def test_job_key_is_deterministic_per_job_and_secret():
    a1, a2 = jobkey.job_key(b"x" * 32, 5), jobkey.job_key(b"x" * 32, 5)
    assert a1.public_openssh == a2.public_openssh
    assert a1.public_openssh.startswith("ssh-ed25519 ") and a1.public_openssh.endswith(" slurm-vc-job-5")
    assert jobkey.job_key(b"x" * 32, 6).public_openssh != a1.public_openssh
    assert jobkey.job_key(b"y" * 32, 5).public_openssh != a1.public_openssh
    assert len(jobkey.derive_seed(b"x" * 32, 5)) == 32


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")
def test_job_private_key_is_a_valid_openssh_key(tmp_path):
    key = jobkey.job_key(b"z" * 32, 77)
    path = tmp_path / "id"
    path.write_bytes(key.private_openssh)
    path.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
    )
    assert derived.stdout.split()[:2] == key.public_openssh.split()[:2]


def test_secret_file_problems_are_node_faults(tmp_path):
    with pytest.raises(HostError, match="cannot read the job key secret"):
        jobkey.read_secret(str(tmp_path / "missing"))
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    with pytest.raises(HostError, match="3 bytes"):
        jobkey.read_secret(str(short))


# --------------------------------------------------------------------------- TaskProlog


def _task_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    toml = tmp_path / "vc.toml"
    toml.write_text(f'state_dir = "{tmp_path}"\n')
    env = {"SLURM_SPANK_VCLUSTER": "tiny", "SLURM_JOB_ID": "42", "SLURM_VC_CONFIG": str(toml)}
    env.update(extra)
    return env


def test_task_prolog_exports_for_a_ready_guest(tmp_path):
    jobenv.publish(tmp_path, make_view(), *ME)
    out = io.StringIO()
    assert task_prolog.task_prolog(_task_env(tmp_path, SLURM_STEP_ID="0"), out) == 0
    text = out.getvalue()
    assert "export VC_HOSTS=vc42-0,vc42-1,vc42-2\n" in text
    assert f"export VC_JOB_DIR={tmp_path / 'jobenv' / '42'}\n" in text


def test_task_prolog_fails_the_task_with_the_local_reason(tmp_path):
    view = make_view()
    view.local = jobenv.LocalState(
        state=jobenv.FAILED, error="slurm-vc[0]: node n2: unknown image", fault="user"
    )
    jobenv.publish(tmp_path, view, *ME)
    out = io.StringIO()
    assert task_prolog.task_prolog(_task_env(tmp_path, SLURM_STEP_ID="0"), out) == 1
    assert out.getvalue() == "print slurm-vc[0]: node n2: unknown image\n"


def test_task_prolog_batch_step_reads_peer_failures_from_the_comment(tmp_path, monkeypatch):
    from slurm_vc import slurm

    jobenv.publish(tmp_path, make_view(), *ME)
    comments = {"text": "slurm-vc[0]: node n3: guest did not become ready"}
    monkeypatch.setattr(slurm, "job_comment", lambda job_id: comments["text"])
    out = io.StringIO()
    assert task_prolog.task_prolog(_task_env(tmp_path), out) == 1
    assert out.getvalue() == "print slurm-vc[0]: node n3: guest did not become ready\n"
    # A reason from an earlier run of a requeued job does not fail this run.
    out = io.StringIO()
    assert task_prolog.task_prolog(_task_env(tmp_path, SLURM_RESTART_COUNT="1"), out) == 0
    assert "export VC_HOSTS=" in out.getvalue()
    comments["text"] = "the user's own comment"
    assert task_prolog.task_prolog(_task_env(tmp_path), io.StringIO()) == 0


def test_task_prolog_without_vcluster_or_without_published_files(tmp_path):
    out = io.StringIO()
    assert task_prolog.task_prolog({"SLURM_JOB_ID": "42"}, out) == 0
    assert out.getvalue() == ""
    assert task_prolog.task_prolog(_task_env(tmp_path), out) == 1
    assert out.getvalue().startswith("print slurm-vc: job 42: the virtual cluster is not available")


# --------------------------------------------------------------------------- prolog classification


@pytest.fixture
def prolog_world(tmp_path, monkeypatch):
    """A site config in tmp_path and stand-ins for Slurm and the lifecycle; records what happened."""
    from slurm_vc import lifecycle, slurm

    secret = tmp_path / "secret"
    secret.write_bytes(b"k" * 32)
    toml = tmp_path / "vc.toml"
    toml.write_text(
        f'state_dir = "{tmp_path}"\njob_key_secret = "{secret}"\n'
        '[host]\ndomain_type = "qemu"\nhugepage_size = "none"\n'
        '[network]\nsubnet = "10.224.0.0/16"\nisolation = "none"\n'
        '[images.tiny]\nkernel = "/boot/vmlinuz"\nseed = "cmdline"\n'
    )
    seen: dict = {"comments": [], "drains": [], "jobs": []}
    monkeypatch.setattr(slurm, "allocated_cpus_and_memory", lambda job, node: slurm.Allocation((0,), 1 << 30))
    monkeypatch.setattr(slurm, "set_job_comment", lambda job, text: seen["comments"].append(text))
    monkeypatch.setattr(slurm, "drain_node", lambda node, reason: seen["drains"].append((node, reason)))
    outcome: dict = {"raise": None}

    def fake_run_prolog(job, config):
        seen["jobs"].append(job)
        if outcome["raise"]:
            raise outcome["raise"]
        log = tmp_path / "console.log"
        log.write_text("booted\n")
        return lifecycle.GuestInfo(
            name="vc-42-n2",
            hostname="vc42-1",
            ip="10.224.0.2",
            job_dir=str(tmp_path),
            console_log=str(log),
            seconds_to_ready=4.25,
        )

    monkeypatch.setattr(lifecycle, "run_prolog", fake_run_prolog)
    facts = JobFacts(
        job_id=42,
        user="alice",
        uid=ME[0],
        gid=ME[1],
        node="n2",
        nodes=("n1", "n2", "n3"),
        vcluster="tiny",
        cpus_per_node={"n1": 1, "n2": 1, "n3": 1},
    )
    return facts, str(toml), seen, outcome


def test_prolog_success_publishes_ready_guest_and_key(prolog_world, tmp_path, monkeypatch):
    facts, toml, seen, _ = prolog_world
    # the published times are wall-clock: prolog start, then the moment the guest was ready
    clock = iter([1000.0, 1006.5])
    monkeypatch.setattr(jobenv, "now", lambda: next(clock))
    assert prolog_cmd.prolog(facts, toml) == 0
    job = seen["jobs"][0]
    assert job.nodes == ("n1", "n2", "n3") and job.memory == 1 << 30 and job.vcluster == "tiny"
    view = jobenv.load(tmp_path / "jobenv" / "42")
    # the whole prolog (6.5 s), not only the guest's own start -> ready (4.25 s)
    assert view.local.state == jobenv.READY and view.local.seconds_to_ready == 6.5
    assert [g.hostname for g in view.guests] == ["vc42-0", "vc42-1", "vc42-2"]
    # The key published for the job is the one whose public half went into the guest.
    public = (tmp_path / "jobenv" / "42" / "id_ed25519.pub").read_text().strip()
    assert job.ssh_public_keys == (public,)
    assert seen["comments"] == [] and seen["drains"] == []


@pytest.mark.parametrize("error", [PlacementError("vcpus=64 does not fit"), UsageError("bad")])
def test_prolog_user_fault_exits_zero_and_tells_the_job(prolog_world, tmp_path, error):
    facts, toml, seen, outcome = prolog_world
    outcome["raise"] = error
    assert prolog_cmd.prolog(facts, toml) == 0  # no drain
    assert seen["drains"] == []
    assert seen["comments"] == [f"slurm-vc[0]: node n2: {error}"]
    view = jobenv.load(tmp_path / "jobenv" / "42")
    assert view.local.state == jobenv.FAILED and view.local.fault == "user"


def test_prolog_node_fault_exits_non_zero_and_drains_with_the_reason(prolog_world, tmp_path):
    facts, toml, seen, outcome = prolog_world
    outcome["raise"] = HypervisorError("cannot connect to qemu:///system")
    assert prolog_cmd.prolog(facts, toml) == HypervisorError.exit_code
    assert seen["drains"] == [("n2", "slurm-vc job 42: cannot connect to qemu:///system")]
    assert seen["comments"] == ["slurm-vc[0]: node n2: cannot connect to qemu:///system"]
    assert jobenv.load(tmp_path / "jobenv" / "42").local.fault == "node"


def test_prolog_unknown_image_is_a_user_fault_before_the_lifecycle(prolog_world):
    facts, toml, seen, _ = prolog_world
    facts = JobFacts(**{**facts.__dict__, "vcluster": "nope"})
    assert prolog_cmd.prolog(facts, toml) == 0
    assert seen["jobs"] == []
    assert "unknown image 'nope'" in seen["comments"][0]


def test_prolog_broken_site_config_is_a_node_fault(prolog_world, tmp_path):
    facts, _, seen, _ = prolog_world
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    assert prolog_cmd.prolog(facts, str(bad)) == site_config.ConfigError.exit_code
    assert seen["drains"] and "unknown key 'nonsense'" in seen["drains"][0][1]


# --------------------------------------------------------------------------- the thin executables

REPO = Path(__file__).resolve().parents[2]


def test_task_prolog_executable_speaks_slurms_protocol(tmp_path):
    jobenv.publish(tmp_path, make_view(), *ME)
    env = {**_task_env(tmp_path, SLURM_STEP_ID="0"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(REPO / "prolog" / "slurm-vc-task-prolog")], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "export VC_HOSTS=vc42-0,vc42-1,vc42-2\n" in done.stdout


@pytest.mark.parametrize(
    "script", ["prolog/slurm-vc-prolog", "epilog/slurm-vc-epilog", "prolog/slurm-vc-task-prolog"]
)
def test_hooks_do_nothing_for_jobs_without_vcluster(script):
    # Slurm gives the prolog no PATH: an empty environment must work, and exit 0 at once.
    done = subprocess.run([str(REPO / script)], capture_output=True, text=True, env={"SLURM_JOB_ID": "9"})
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_task_prolog_batch_step_of_a_one_node_job_asks_slurm_nothing(tmp_path, monkeypatch):
    """No other prolog can have failed: the batch script starts without a Slurm round trip."""
    from slurm_vc import slurm

    view = make_view()
    view.guests = view.guests[:1]
    jobenv.publish(tmp_path, view, *ME)

    def no_slurm(job_id):
        raise AssertionError("a one-node job's TaskProlog asked Slurm for the Comment")

    monkeypatch.setattr(slurm, "job_comment", no_slurm)
    out = io.StringIO()
    assert task_prolog.task_prolog(_task_env(tmp_path), out) == 0
    assert "export VC_HOSTS=" in out.getvalue()


def test_publish_into_an_unwritable_state_dir_is_a_state_error(tmp_path):
    """A file system error while publishing is the node's state problem (exit 10), not an internal error."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    view = jobenv.JobView(job_id=5, node="n1", user="u", image="tiny", login_user="root", guests=[])
    with pytest.raises(StateError, match="cannot publish job 5's files: .*state"):
        jobenv.publish(str(blocker), view, os.getuid(), os.getgid())


def test_load_current_in_an_salloc_shell_says_where_the_guests_are(tmp_path):
    """An salloc shell has the job's SLURM_JOB_ID but runs on the submit host: nothing is published
    there.  The message says so and what to run instead, not just "no virtual cluster"."""
    toml = tmp_path / "vc.toml"
    toml.write_text(f'state_dir = "{tmp_path}"\n')
    env = {"SLURM_JOB_ID": "42", "SLURM_VC_CONFIG": str(toml)}
    with pytest.raises(StateError, match=r"job 42's guest list is published on its nodes.*--vcluster-host"):
        jobenv.load_current(env)
    # on one of the job's nodes (slurmd sets SLURMD_NODENAME) the generic message stays
    with pytest.raises(StateError, match="no virtual cluster on this node"):
        jobenv.load_current({**env, "SLURMD_NODENAME": "n1"})
    # and where the list is published, it is read
    jobenv.publish(tmp_path, make_view(), *ME)
    assert jobenv.load_current(env).job_id == 42
