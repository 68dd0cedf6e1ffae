"""The launcher commands and the srun task wrapper, with a stand-in ssh that runs the remote command locally.

The stand-in (``$SLURM_VC_SSH``) checks that it was given the job key and the login user, then runs
the remote command line with /bin/sh, as sshd would in the guest; the third guest (address ending
in .3) plays an unreachable one (exit 255).  The real ssh into real guests is covered by
tests/e2e/test_vcluster_jobs.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_vc import cli, guestexec, jobenv
from slurm_vc.commands import console, status
from slurm_vc.errors import StateError, UsageError

REPO = Path(__file__).resolve().parents[2]
ME = (os.getuid(), os.getgid())

FAKE_SSH = r"""#!/bin/sh
# stand-in for ssh: ssh [options] -T|-t user@ip [-- command]
log="$FAKE_SSH_LOG"
key=""; target=""; cmd=""
while [ $# -gt 0 ]; do
  case "$1" in
    -i) key="$2"; shift 2;;
    -o|-F) shift 2;;
    -T|-t) shift;;
    --) cmd="$2"; shift 2;;
    *) target="$1"; shift;;
  esac
done
echo "key=$key target=$target" >> "$log"
[ -f "$key" ] || { echo "no key" >&2; exit 255; }
case "$target" in *.3) echo "ssh: connect to host ${target#*@} port 22: No route to host" >&2; exit 255;; esac
GUEST="${target#*@}" exec /bin/sh -c "$cmd"
"""


@pytest.fixture
def job(tmp_path, monkeypatch):
    """A published 3-guest job (this node: n1) and the stand-in ssh."""
    from slurm_vc import config, jobkey, network

    settings = config.NetworkSettings(subnet="10.224.0.0/16")
    net = network.job_network(42, ["n1", "n2", "n3"], settings, 2)
    view = jobenv.JobView(
        job_id=42,
        node="n1",
        user="alice",
        image="tiny",
        login_user="root",
        guests=jobenv.guest_entries(net.guests),
        local=jobenv.LocalState(state=jobenv.READY, started_at=10.0, ready_at=13.0),
    )
    key = jobkey.job_key(b"t" * 32, 42)
    directory = jobenv.publish(tmp_path, view, *ME, key.private_openssh, key.public_openssh)
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    monkeypatch.setenv(guestexec.SSH_ENV, str(ssh))
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    monkeypatch.setenv(jobenv.JOB_DIR_ENV, str(directory))
    return jobenv.load(directory), tmp_path


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True)


def test_remote_command_keeps_arguments_intact():
    args = ["printf", "%s|", "a b", "it's", "$HOME", "*", ""]
    assert sh(guestexec.remote_command(args)).stdout == "a b|it's|$HOME|*||"


def test_remote_command_env_and_absolute_program_fallback():
    line = guestexec.remote_command(["/no/such/dir/printenv", "SLURM_PROCID"], {"SLURM_PROCID": "3"})
    assert sh(line).stdout == "3\n"  # /no/such/dir/printenv is not in the "guest": found on its PATH
    assert sh(guestexec.remote_command(["sh", "-c", "exit 7"])).returncode == 7
    with pytest.raises(UsageError):
        guestexec.remote_command([])


def test_forwarded_env_only_task_identity():
    env = {
        "SLURM_PROCID": "1",
        "SLURM_JOB_ID": "42",
        "HOME": "/home/alice",
        "VC_SSH_KEY": "/k",
        "VC_HOSTS": "a,b",
    }
    assert guestexec.forwarded_env(env) == {"SLURM_JOB_ID": "42", "SLURM_PROCID": "1", "VC_HOSTS": "a,b"}


@pytest.mark.skipif(not os.access(guestexec.SSH, os.X_OK), reason="needs the OpenSSH client")
def test_ssh_to_a_guest_reads_no_ssh_config(job):
    """``ssh -G`` prints the configuration ssh would use: with our options no config file applies
    (Debian's /etc/ssh/ssh_config sends LANG and LC_*; a user's could add a ProxyJump)."""
    view, _ = job
    argv = guestexec.ssh_argv(view, view.guests[0].ip, None)
    argv[0] = guestexec.SSH
    effective = subprocess.run([*argv[:-1], "-G", argv[-1]], capture_output=True, text=True, check=True)
    assert "\nsendenv " not in effective.stdout
    assert f"\nidentityfile {view.key_path}\n" in effective.stdout
    assert "\nuser root\n" in effective.stdout


def test_run_parallel_labels_lines_and_reports_exit_codes(job):
    view, tmp_path = job
    out, err = io.StringIO(), io.StringIO()
    codes = guestexec.run_parallel(
        view, view.guests[:2], ["sh", "-c", 'echo "hi from $GUEST"; echo oops >&2'], out, err
    )
    assert codes == {"vc42-0": 0, "vc42-1": 0}
    ips = [guest.ip for guest in view.guests]
    assert sorted(out.getvalue().splitlines()) == [f"vc42-0: hi from {ips[0]}", f"vc42-1: hi from {ips[1]}"]
    assert sorted(err.getvalue().splitlines()) == ["vc42-0: oops", "vc42-1: oops"]
    log = (tmp_path / "ssh.log").read_text()
    assert f"key={view.key_path} target=root@{ips[0]}" in log


def test_run_command_exit_code_is_nonzero_if_any_guest_fails(job, capsys):
    assert cli.main(["run", "--", "true"]) == 255  # guest 2 (10.224.0.3) is unreachable
    captured = capsys.readouterr()
    assert "slurm-vc run: vc42-2: could not be reached (ssh failed)" in captured.err
    assert cli.main(["run", "--node", "0", "--node", "n2", "--", "sh", "-c", "exit 3"]) == 3
    assert cli.main(["run", "--node", "vc42-0", "--", "hostname"]) == 0
    assert cli.main(["run", "--node", "n9", "--", "true"]) == 2
    assert "no guest 'n9'" in capsys.readouterr().err


def test_run_keeps_exit_codes_when_started_with_sigchld_ignored(job):
    """An ignored SIGCHLD is inherited across exec; without restore_child_status every ssh of
    ``slurm-vc run`` would report 0 (Python's subprocess cannot see a status the kernel reaped)."""
    import signal

    done = subprocess.run(
        [sys.executable, "-m", "slurm_vc", "run", "--node", "0", "--", "sh", "-c", "exit 3"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),
    )
    assert done.returncode == 3, done.stderr


def test_run_without_a_command_names_the_subcommand(job, capsys):
    """The error names ``run`` (its own argument, also called command, must not shadow it)."""
    assert cli.main(["run"]) == UsageError.exit_code
    assert capsys.readouterr().err.startswith("slurm-vc run: error: no command given")


def test_hosts_and_hostfile_commands(job, capsys):
    assert cli.main(["hosts"]) == 0
    assert capsys.readouterr().out == "vc42-0\nvc42-1\nvc42-2\n"
    assert cli.main(["hosts", "--long"]) == 0
    assert "1     n2              vc42-1" in capsys.readouterr().out
    assert cli.main(["hostfile", "--format", "mpich"]) == 0
    assert capsys.readouterr().out == "vc42-0:2\nvc42-1:2\nvc42-2:2\n"
    assert cli.main(["hostfile"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "vc42-0 slots=2"


def test_launcher_outside_a_job(monkeypatch, capsys):
    monkeypatch.delenv(jobenv.JOB_DIR_ENV, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOBID", raising=False)
    assert cli.main(["hosts"]) == UsageError.exit_code
    assert "not inside a Slurm job" in capsys.readouterr().err


def test_status_merges_node_records(job, monkeypatch, capsys):
    view, _ = job
    from slurm_vc import slurm

    remote = json.dumps({"node": "n2", "state": "ready", "seconds_to_ready": 4.5, "error": None})
    calls = []

    def fake_run(job_id, nodes, argv, timeout=60.0):
        calls.append((job_id, list(nodes), argv))
        return "srun: some noise\n" + remote + "\n"

    monkeypatch.setattr(slurm, "run_on_job_nodes", fake_run)
    assert cli.main(["status"]) == 1  # n3 did not answer: not every guest is ready
    out = capsys.readouterr().out.splitlines()
    ips = [guest.ip for guest in view.guests]
    assert out[1].split() == ["0", "n1", "vc42-0", ips[0], "ready", "3.0"]
    assert out[2].split() == ["1", "n2", "vc42-1", ips[1], "ready", "4.5"]
    assert out[3].split() == ["2", "n3", "vc42-2", ips[2], "unknown", "-"]
    assert calls[0][:2] == (42, ["n2", "n3"])
    assert calls[0][2][1:] == ["-m", "slurm_vc", "status", "--local", "--json"]
    assert cli.main(["status", "--local", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["node"] == "n1" and record["seconds_to_ready"] == 3.0


def test_status_rows_pure(job):
    view, _ = job
    rows = status.merge(
        view, status.parse_records('{"node": "n1", "state": "failed", "error": "boom"}\nnot json')
    )
    assert [row["state"] for row in rows] == ["failed", "unknown", "unknown"]
    assert "      boom" in status.format_rows(rows)


def test_console_tail_local_and_remote(job, monkeypatch, capsys):
    view, tmp_path = job
    log = tmp_path / "console.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    view.local.console_log = str(log)
    jobenv.publish(tmp_path, view, *ME)
    assert cli.main(["console", "0", "--lines", "3"]) == 0
    assert capsys.readouterr().out == "line 97\nline 98\nline 99\n"
    from slurm_vc import slurm

    monkeypatch.setattr(
        slurm, "run_on_job_nodes", lambda job_id, nodes, argv, timeout=60.0: f"{nodes[0]} tail\n"
    )
    assert cli.main(["console", "n3"]) == 0
    assert capsys.readouterr().out == "n3 tail\n"
    assert console.tail_lines(str(log), 0) == ""


def test_console_before_the_guest_logged_anything(job, capsys):
    assert cli.main(["console", "0"]) == StateError.exit_code
    assert "has no console log yet" in capsys.readouterr().err


def test_task_wrapper_runs_argv0_and_args_and_keeps_the_exit_code(job, tmp_path):
    view, _ = job
    env = dict(os.environ)
    env.update(
        {
            guestexec.ARGV0_ENV: "sh",
            "SLURM_PROCID": "5",
            "PYTHONPATH": str(REPO),
        }
    )
    wrapper = REPO / "prolog" / "slurm-vc-exec"
    done = subprocess.run(
        [
            str(wrapper),
            "-c",
            'echo "task $SLURM_PROCID in $GUEST: $0 $1"; read x; echo "got $x"; exit 4',
            "a b",
        ],
        input="stdin-line\n",
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 4, done.stderr
    assert done.stdout == f"task 5 in {view.guests[0].ip}: a b \ngot stdin-line\n"


@pytest.mark.parametrize("layout", ["venv", "source"])
def test_task_wrapper_ignores_the_users_python_settings_and_working_directory(job, tmp_path, layout):
    """Module systems set PYTHONHOME/PYTHONPATH in jobs, and a job's directory may hold a json.py:
    neither may stop the wrapper (before -I, each made every srun task of the job fail).
    "source" is a tree without .venv, where the system python3 imports slurm_vc from the tree."""
    wrapper = REPO / "prolog" / "slurm-vc-exec"
    if layout == "source":
        tree = tmp_path / "tree"
        (tree / "prolog").mkdir(parents=True)
        (tree / "slurm_vc").symlink_to(REPO / "slurm_vc")
        wrapper = tree / "prolog" / "slurm-vc-exec"
        wrapper.write_text((REPO / "prolog" / "slurm-vc-exec").read_text())
        wrapper.chmod(0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "json.py").write_text("raise SystemExit('the json.py of the job directory was imported')\n")
    env = dict(os.environ, PYTHONHOME="/nonexistent", PYTHONPATH=str(workdir))
    env[guestexec.ARGV0_ENV] = "sh"
    done = subprocess.run(
        [str(wrapper), "-c", "echo in $GUEST; exit 5"], capture_output=True, text=True, env=env, cwd=workdir
    )
    assert done.returncode == 5, done.stderr
    assert done.stdout == f"in {job[0].guests[0].ip}\n"


def test_task_wrapper_errors_are_one_line(job):
    env = dict(os.environ)
    env.pop(guestexec.ARGV0_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "slurm_vc.guestexec"], capture_output=True, text=True, env=env
    )
    assert done.returncode == UsageError.exit_code
    assert done.stderr.startswith("slurm-vc-exec: error: SLURM_VC_EXEC_ARGV0 is not set")
    env[guestexec.ARGV0_ENV] = "true"
    env[jobenv.JOB_DIR_ENV] = "/nonexistent"
    done = subprocess.run(
        [sys.executable, "-m", "slurm_vc.guestexec"], capture_output=True, text=True, env=env
    )
    assert done.returncode == StateError.exit_code
    assert "no virtual cluster on this node" in done.stderr
