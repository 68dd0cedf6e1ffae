"""Running commands inside the job's guests over ssh with the job key.

Used by ``slurm-vc run`` (parallel, output labelled ``hostname: line``), ``slurm-vc ssh`` (one
interactive session) and ``slurm-vc-exec`` (the SPANK task wrapper: one srun task inside this node's
guest, stdin/stdout/stderr and exit code passed through untouched).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Optional

from .errors import StateError, UsageError
from .jobenv import JobView, ssh_options

SSH = "/usr/bin/ssh"
ARGV0_ENV = "SLURM_VC_EXEC_ARGV0"  # set by the SPANK plugin: the task's original argv[0]
SSH_FAILED = 255  # ssh's own exit code for "could not connect/authenticate"

# Task variables worth having inside the guest (MPI-style rank and size, the job's identity).
FORWARDED_ENV = (
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "SLURM_NPROCS",
    "SLURM_CPUS_PER_TASK",
    "OMP_NUM_THREADS",
    "VC_HOSTS",
    "VC_IPS",
    "VC_NODES",
    "VC_LOCAL_GUEST",
)


SSH_ENV = "SLURM_VC_SSH"  # another ssh client (absolute path); tests use a stand-in


def ssh_binary() -> str:
    """The ssh client: ``$SLURM_VC_SSH``, else /usr/bin/ssh (tasks may have no useful PATH)."""
    override = os.environ.get(SSH_ENV)
    if override:
        return override
    return SSH if os.access(SSH, os.X_OK) else "ssh"


def remote_command(argv: Sequence[str], env: Optional[Mapping[str, str]] = None) -> str:
    """A /bin/sh command line running ``argv`` in the guest with ``env`` set.

    An absolute program path that does not exist in the guest falls back to its base name looked up
    in the guest's PATH (``/usr/bin/hostname`` on the host may be ``/bin/hostname`` in the guest).
    """
    if not argv:
        raise UsageError("no command given")
    program, *args = argv
    assignments = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    quoted_args = " ".join(shlex.quote(arg) for arg in args)
    lines = [f"p={shlex.quote(program)}"]
    if program.startswith("/"):
        lines.append('[ -x "$p" ] || p="${p##*/}"')
    run = " ".join(["exec", *(["env", *assignments] if assignments else []), '"$p"'])
    if quoted_args:
        run += " " + quoted_args
    lines.append(run)
    return "; ".join(lines)


def ssh_argv(view: JobView, ip: str, command: Optional[str], tty: bool = False) -> list[str]:
    """The ssh command line reaching guest ``ip`` as the image's login user with the job key."""
    key = view.key_path
    if not key or not os.path.exists(key):
        raise StateError(
            f"the job key {key} is missing: the virtual cluster of job {view.job_id} is not up on this node"
        )
    argv = [ssh_binary(), *ssh_options(key), "-t" if tty else "-T", f"{view.login_user}@{ip}"]
    if command is not None:
        argv += ["--", command]
    return argv


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The task variables passed into the guest."""
    return {name: environ[name] for name in FORWARDED_ENV if name in environ}


def _pump(stream: IO[bytes], label: str, out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"{label}: {line}\n")
            out.flush()
    stream.close()


def run_parallel(
    view: JobView,
    targets: Sequence,
    argv: Sequence[str],
    stdout: IO[str] = sys.stdout,
    stderr: IO[str] = sys.stderr,
) -> dict[str, int]:
    """Run ``argv`` in every guest of ``targets`` at once; output lines labelled ``hostname: ...``.

    Returns hostname -> exit code (255 = ssh could not reach the guest).
    """
    command = remote_command(argv)
    lock = threading.Lock()
    procs: list[tuple[object, subprocess.Popen, list[threading.Thread]]] = []
    for guest in targets:
        proc = subprocess.Popen(
            ssh_argv(view, guest.ip, command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        pumps = [
            threading.Thread(target=_pump, args=(proc.stdout, guest.hostname, stdout, lock), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, guest.hostname, stderr, lock), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        procs.append((guest, proc, pumps))
    codes: dict[str, int] = {}
    for guest, proc, pumps in procs:
        codes[guest.hostname] = proc.wait()
        for pump in pumps:
            pump.join()
    return codes


def exec_task(view: JobView, argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Replace this process with ssh running ``argv`` in this node's guest (the srun task wrapper).

    stdin, stdout and stderr are inherited, so srun's labels and input forwarding work unchanged;
    ssh exits with the remote command's exit code.
    """
    local = view.local_guest
    if local is None:
        raise StateError(f"job {view.job_id} has no guest on node {view.node}")
    command = remote_command(argv, forwarded_env(environ))
    # `srun --pty`: give the remote side a terminal too.
    ssh = ssh_argv(view, local.ip, command, tty=sys.stdin.isatty())
    sys.stdout.flush()
    os.execv(ssh[0], ssh)


__all__ = [
    "ARGV0_ENV",
    "FORWARDED_ENV",
    "SSH_FAILED",
    "exec_task",
    "forwarded_env",
    "remote_command",
    "run_parallel",
    "ssh_argv",
]


def wrapper_main(args: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None) -> int:
    """``slurm-vc-exec ARGS...``: the SPANK task wrapper; runs ``$SLURM_VC_EXEC_ARGV0 ARGS`` in the guest."""
    from .errors import VcError
    from .jobenv import load_current

    env = os.environ if environ is None else environ
    args = list(sys.argv[1:] if args is None else args)
    try:
        argv0 = env.get(ARGV0_ENV)
        if not argv0:
            raise UsageError(
                f"{ARGV0_ENV} is not set: slurm-vc-exec is started by the SPANK plugin for srun tasks"
            )
        exec_task(load_current(env, env.get("SLURM_VC_CONFIG")), [argv0, *args], env)
    except VcError as exc:
        print(f"slurm-vc-exec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"slurm-vc-exec: error: cannot run ssh: {exc.strerror}", file=sys.stderr)
        return 1
    return 1  # not reached: exec_task replaces the process


if __name__ == "__main__":
    sys.exit(wrapper_main())
