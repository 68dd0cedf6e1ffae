"""The SPANK plugin: builds with -Wall -Werror against the installed Slurm headers, exports only what
Slurm needs, and behaves at submit time inside the real sbatch.

The submit-time tests need no Slurm daemons: the plugin's option callback runs inside sbatch before
sbatch contacts the controller, so a rejected value ends sbatch with the plugin's message, and an
accepted one gets as far as "Unable to contact slurm controller".  A stand-in validator records its
argv.  Prolog, epilog and task wrapping through real slurmd are in tests/e2e/test_vcluster_jobs.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPANK = REPO / "spank"
HEADER = Path("/usr/include/slurm/spank.h")

pytestmark = pytest.mark.skipif(
    not HEADER.exists() or shutil.which("gcc") is None or shutil.which("make") is None,
    reason="needs gcc, make and the Slurm headers (libslurm-dev)",
)

# Data symbols the SPANK_PLUGIN macro defines; Slurm's plugin loader looks them up by name.
PLUGIN_DATA = {"plugin_name", "plugin_type", "plugin_version", "spank_plugin_version"}


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    """Build a fresh copy of spank/ (so the test never depends on a stale build in the tree)."""
    build = tmp_path_factory.mktemp("spank")
    for source in SPANK.iterdir():
        if source.suffix in (".c", ".h") or source.name == "Makefile":
            shutil.copy(source, build / source.name)
    done = subprocess.run(["make", "-C", str(build)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-Wall" in done.stdout and "-Werror" in done.stdout and "-fvisibility=hidden" in done.stdout
    return build / "slurm_vc.so"


def test_exports_only_spank_entry_points_and_plugin_data(plugin):
    nm = subprocess.run(
        ["nm", "-D", "--defined-only", str(plugin)], capture_output=True, text=True, check=True
    )
    symbols = {line.split()[-1] for line in nm.stdout.splitlines() if line.strip()}
    functions = symbols - PLUGIN_DATA
    assert PLUGIN_DATA <= symbols
    assert functions and all(name.startswith("slurm_spank_") for name in functions), sorted(functions)
    assert {"slurm_spank_init", "slurm_spank_init_post_opt", "slurm_spank_task_init"} <= functions


def test_plugin_name_is_vcluster(plugin):
    strings = subprocess.run(["strings", str(plugin)], capture_output=True, text=True).stdout
    assert "vcluster" in strings.split()


# --------------------------------------------------------------------------- inside the real sbatch


VALIDATOR = """#!/bin/sh
for v; do :; done
echo "$*" >> "{log}"
case "$v" in
  good*) exit 0;;
  slow*) sleep 30;;
  quiet*) exec >/dev/null 2>&1; sleep 30;;
  *) echo "slurm-vc validate-request: error: unknown image '$v' in --vcluster" >&2; exit 2;;
esac
"""


@pytest.fixture
def submit(plugin, tmp_path):
    """Run sbatch against a private slurm.conf + plugstack.conf that load the freshly built plugin."""
    if shutil.which("sbatch") is None:
        pytest.skip("needs sbatch (slurm-client)")
    log = tmp_path / "validator.log"
    validator = tmp_path / "validator"
    validator.write_text(VALIDATOR.format(log=log))
    validator.chmod(0o755)
    (tmp_path / "slurm.conf").write_text(
        "ClusterName=spanktest\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\n"
        f"AuthType=auth/none\nMessageTimeout=1\nTCPTimeout=1\nPlugStackConfig={tmp_path / 'plugstack.conf'}\n"
        "NodeName=n1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=n1 Default=YES\n"
    )
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ntrue\n")

    def run(
        *args: str, plugstack_args: str = "", script_text: str | None = None, ignore_sigchld: bool = False
    ) -> subprocess.CompletedProcess:
        (tmp_path / "plugstack.conf").write_text(
            f"required {plugin} validator={validator} config=/etc/site/vc.toml timeout=1 {plugstack_args}\n"
        )
        if script_text is not None:
            script.write_text(script_text)
        env = dict(os.environ, SLURM_CONF=str(tmp_path / "slurm.conf"))
        # An ignored SIGCHLD survives exec, as it does under launchers that ignore it themselves.
        ignore = (lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN)) if ignore_sigchld else None
        return subprocess.run(
            ["sbatch", *args, str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            preexec_fn=ignore,
        )

    run.log = log  # type: ignore[attr-defined]
    return run


def test_bad_value_rejected_with_the_validators_message(submit):
    done = submit("--vcluster=nope,vcpus=2")
    assert done.returncode != 0
    assert "vcluster: slurm-vc validate-request: error: unknown image 'nope,vcpus=2'" in done.stderr
    assert "Invalid --vcluster argument" in done.stderr
    assert "contact slurm controller" not in done.stderr  # rejected before anything was sent
    # No shell: the value travels as one argv element after "--", the config path before the command.
    assert submit.log.read_text().splitlines() == [
        "--config /etc/site/vc.toml validate-request --quiet -- nope,vcpus=2"
    ]


def test_good_value_passes_the_plugin(submit):
    done = submit("--vcluster=good")
    assert "Invalid --vcluster" not in done.stderr
    assert "contact slurm controller" in done.stderr  # got past the plugin to the (absent) controller


def test_a_submitter_ignoring_sigchld_still_gets_the_verdict(submit):
    """With SIGCHLD ignored the kernel reaps the validator itself; the plugin must not read the
    lost exit status as "valid" (it did: the bad value reached the controller)."""
    done = submit("--vcluster=nope", ignore_sigchld=True)
    assert done.returncode != 0
    assert "unknown image 'nope'" in done.stderr and "Invalid --vcluster argument" in done.stderr
    assert "contact slurm controller" not in done.stderr
    done = submit("--vcluster=good", ignore_sigchld=True)
    assert "Invalid --vcluster" not in done.stderr
    assert "contact slurm controller" in done.stderr


def test_sbatch_directive_in_the_script(submit):
    done = submit(script_text="#!/bin/sh\n#SBATCH --vcluster=bad-from-script\ntrue\n")
    assert "unknown image 'bad-from-script'" in done.stderr


def test_hostile_value_is_not_interpreted(submit):
    done = submit("--vcluster=$(touch /tmp/pwned);x")
    assert done.returncode != 0
    assert submit.log.read_text().splitlines()[-1].endswith("-- $(touch /tmp/pwned);x")


def test_validator_timeout(submit):
    done = submit("--vcluster=slow")
    assert "did not answer within 1 s" in done.stderr
    done = submit("--vcluster=quiet")  # closes its output early but does not exit
    assert "did not answer within 1 s" in done.stderr
    done = submit("--vcluster=slow", plugstack_args="required=0")
    assert "Invalid --vcluster" not in done.stderr  # required=0: a stuck validator does not block submits


def test_missing_validator(submit, tmp_path):
    done = submit("--vcluster=good", plugstack_args=f"validator={tmp_path / 'missing'}")
    assert "cannot run the validator" in done.stderr and "Invalid --vcluster" in done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ("validater=/x", "unknown plugstack.conf key 'validater'"),
        ("timeout=0", "timeout= must be a whole number from 1 to 3600"),
        ("required=yes", "required= must be a whole number from 0 to 1"),
        ("config=relative.toml", "config= needs an absolute path"),
        ("justaword", "'justaword' is not KEY=VALUE"),
    ],
)
def test_plugstack_arguments_are_strict(submit, args, message):
    done = submit("--vcluster=good", plugstack_args=args)
    assert done.returncode != 0
    assert message in done.stderr


def test_options_in_help(submit):
    submit("--vcluster=good")  # writes plugstack.conf
    help_text = subprocess.run(
        ["sbatch", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, SLURM_CONF=str(Path(submit.log).parent / "slurm.conf")),
    )
    assert "--vcluster=SPEC" in help_text.stdout
    assert "--vcluster-host" in help_text.stdout
