#!/usr/bin/env bash
# make demo: run examples/hello-vcluster.sh in a virtual cluster on an N-node sandbox Slurm cluster
# on this machine, show its output and a per-phase timing summary, check that the job left nothing
# behind, and tear the sandbox down (also on failure or Ctrl-C).
#
#   bash scripts/demo.sh [NODES]        (as root, after scripts/install-deps.sh; `make demo` does both)
#
# Environment: DEMO_SANDBOX (sandbox name, default vcdemo: a sandbox you started yourself with the
# default name is left alone), DEMO_TIMEOUT (seconds to wait for the job, default 300),
# DEMO_KEEP=1 (leave the sandbox up afterwards, for poking around with `slurm-vc sandbox exec`).
# Exit status: 0 when the job completed with exit code 0 and nothing of it was left on any node.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

NODES=${1:-3}
NAME=${DEMO_SANDBOX:-vcdemo}
JOB_TIMEOUT=${DEMO_TIMEOUT:-300}
TEARDOWN_TIMEOUT=120
PY=${PY:-$REPO/.venv/bin/python}
SLURM_VC=${SLURM_VC:-$REPO/.venv/bin/slurm-vc}
WORK=$(mktemp -d /tmp/slurm-vc-demo.XXXXXX)
OUT=$WORK/out
SANDBOX_UP=0
WATCH_PID=""
STEP=0
STEPS=10

step() {
  STEP=$((STEP + 1))
  printf '\n\033[1m== [%d/%d] %s\033[0m\n' "$STEP" "$STEPS" "$*"
}
note() { printf '   %s\n' "$*"; }
fail() {
  printf '\n\033[1;31mdemo FAILED: %s\033[0m\n' "$*"
  exit 1
}
in_sandbox() { "$SLURM_VC" sandbox exec --name "$NAME" "$@"; }
as_root() { "$SLURM_VC" sandbox exec --name "$NAME" --user root -- "$@"; }

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$WATCH_PID" ] && kill -0 "$WATCH_PID" 2>/dev/null; then
    kill "$WATCH_PID" 2>/dev/null
    wait "$WATCH_PID" 2>/dev/null
  fi
  if [ "$SANDBOX_UP" = 1 ]; then
    if [ "${DEMO_KEEP:-0}" = 1 ]; then
      printf '\n== sandbox %s left up (DEMO_KEEP=1): %s sandbox exec --name %s -- squeue\n' \
        "$NAME" "$SLURM_VC" "$NAME"
    else
      printf '\n\033[1m== [%d/%d] tear the sandbox down\033[0m\n' "$STEPS" "$STEPS"
      # logs are kept for a post-mortem only when the demo failed
      purge=()
      [ "$status" -ne 0 ] || purge=(--purge-logs)
      if "$SLURM_VC" sandbox down --name "$NAME" "${purge[@]}"; then
        note "sandbox $NAME is down: no daemon, namespace, bridge or mount of it is left"
        [ "$status" -eq 0 ] || note "its logs: /var/lib/slurm-vc-sandbox/$NAME/log"
      else
        note "sandbox down failed (status $?): run '$SLURM_VC sandbox down --name $NAME' again"
        [ "$status" -ne 0 ] || status=1
      fi
    fi
  fi
  rm -rf "$WORK"
  if [ "$status" -eq 0 ]; then
    printf '\n\033[1;32mdemo OK\033[0m\n'
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'printf "\ninterrupted\n"; exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "run as root (the sandbox makes namespaces, bridges and daemons)"
[ -x "$SLURM_VC" ] || fail "$SLURM_VC missing: run scripts/install-deps.sh (make demo does)"
case "$NODES" in '' | *[!0-9]*) fail "NODES must be a number, got '$NODES'" ;; esac

# --------------------------------------------------------------------------------------------------
step "build the SPANK plugin (make -C spank) and the tiny test guest (guest/out)"
make -s -C spank || fail "building the SPANK plugin failed"
note "plugin: $(ls spank/*.so 2>/dev/null | tr '\n' ' ')"
bash guest/build-tiny-guest.sh guest/out >"$WORK/guest-build.log" 2>&1 || {
  tail -20 "$WORK/guest-build.log"
  fail "building the tiny guest failed"
}
note "guest: $(cd guest/out && ls -sh vmlinuz initrd.img | tr '\n' ' ')"

# --------------------------------------------------------------------------------------------------
step "bring up a $NODES-node sandbox Slurm cluster ($NAME): munge, slurmctld, slurmd + libvirtd per node"
SANDBOX_UP=1
"$SLURM_VC" sandbox up --name "$NAME" --nodes "$NODES" >/dev/null || fail "sandbox up failed"
as_root sinfo -h -N -o '   %N: %T, %c CPUs, %m MB' || fail "sinfo failed"
JOB_USER=$("$PY" -c "from slurm_vc.sandbox.cluster import Sandbox; print(Sandbox('$NAME', quiet=True).user)")
SANDBOX_CONF=$("$PY" -c "from slurm_vc.sandbox.layout import layout_for; print(layout_for('$NAME').slurm_conf)")
# Polling Slurm while the guests boot: call scontrol directly (a Python wrapper per poll would take
# CPU from the guests on a small machine).
scontrol_job() { SLURM_CONF="$SANDBOX_CONF" scontrol show job "$@"; }
# sbatch runs the --vcluster validator (slurm-vc from this venv) as the job user.
in_sandbox -- "$SLURM_VC" --help >/dev/null 2>&1 ||
  fail "the job user $JOB_USER cannot run $SLURM_VC: the checkout or the venv's Python is not reachable by
   other users (e.g. under /root, or a pyenv Python in /root). Put the checkout in a world-readable
   directory, or rebuild the venv from the system Python: rm -rf .venv && PYTHON=/usr/bin/python3 make demo"

# The job's files live where the job user can read and write them, whatever the checkout's permissions.
mkdir -p "$OUT"
cp examples/hello-vcluster.sh "$OUT/"
chown -R "$JOB_USER" "$OUT"
chmod 755 "$WORK"

# --------------------------------------------------------------------------------------------------
step "submit as $JOB_USER: sbatch -N$NODES --vcluster=centos7-hpc examples/hello-vcluster.sh"
"$PY" -m slurm_vc.jobwatch pools >"$WORK/pools.json"
SUBMIT=$(date +%s.%N)
SUBMITTED=$(in_sandbox --chdir "$OUT" -- sbatch -N"$NODES" --vcluster=centos7-hpc hello-vcluster.sh 2>&1)
echo "$SUBMITTED" | sed 's/^/   /'
JOB=$(echo "$SUBMITTED" | sed -n 's/^Submitted batch job \([0-9][0-9]*\).*/\1/p')
[ -n "$JOB" ] || fail "sbatch did not queue the job"
"$PY" -m slurm_vc.jobwatch watch --name "$NAME" --job "$JOB" --submit "$SUBMIT" \
  --out "$WORK/timeline.json" --timeout $((JOB_TIMEOUT + TEARDOWN_TIMEOUT)) &
WATCH_PID=$!

# --------------------------------------------------------------------------------------------------
step "wait for job $JOB (prolog boots a guest on every node; at most ${JOB_TIMEOUT} s)"
START=$(date +%s)
LAST=""
STATE=""
REASON=""
while :; do
  # Keep the last full record: Slurm forgets a job MinJobAge after it ends.
  if scontrol_job "$JOB" >"$WORK/job.now" 2>/dev/null; then
    mv "$WORK/job.now" "$WORK/job.txt"
    STATE=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' "$WORK/job.txt" | head -1)
    REASON=$(sed -n 's/.*Reason=\([^ ]*\).*/\1/p' "$WORK/job.txt" | head -1)
  else
    STATE=${STATE:-GONE}
  fi
  NOW=$(($(date +%s) - START))
  if [ "$STATE $REASON" != "$LAST" ]; then
    note "$(printf '%4d s' "$NOW")  $STATE${REASON:+ ($REASON)}"
    LAST="$STATE $REASON"
  fi
  case "$STATE" in
    COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | PREEMPTED | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE | GONE) break ;;
  esac
  case "$REASON" in
    *held* | *Held*)
      note "the job is held: a prolog failed (node drained?)"
      as_root sinfo -R | sed 's/^/   /'
      break
      ;;
  esac
  if [ "$NOW" -ge "$JOB_TIMEOUT" ]; then
    note "still $STATE after ${JOB_TIMEOUT} s: cancelling"
    as_root scancel "$JOB"
    break
  fi
  sleep 0.5
done

# --------------------------------------------------------------------------------------------------
step "job output ($OUT/slurm-$JOB.out)"
if [ -s "$OUT/slurm-$JOB.out" ]; then
  sed 's/^/   | /' "$OUT/slurm-$JOB.out"
else
  note "(no output)"
fi

# --------------------------------------------------------------------------------------------------
step "Slurm's view: scontrol show job $JOB"
grep -oE '\b(JobState|Reason|ExitCode|RunTime|NodeList|Comment)=[^ ]*' "$WORK/job.txt" 2>/dev/null \
  | grep -v '^NodeList=$' | sed 's/^/   /'
EXIT_CODE=$(sed -n 's/.*ExitCode=\([0-9:]*\).*/\1/p' "$WORK/job.txt" 2>/dev/null | head -1)
JOB_OK=0
[ "$STATE" = COMPLETED ] && [ "$EXIT_CODE" = "0:0" ] && JOB_OK=1
if [ "$JOB_OK" != 1 ]; then
  note "the job did not complete cleanly; the nodes' logs say:"
  grep -hE 'error|slurm-vc' "/var/lib/slurm-vc-sandbox/$NAME/log/"slurmd-*.log 2>/dev/null \
    | grep -v pmix | tail -15 | sed 's/^/   /'
  if [ "$STATE" != COMPLETED ] && [ "$STATE" != FAILED ]; then
    as_root scancel "$JOB" 2>/dev/null
  fi
fi

# --------------------------------------------------------------------------------------------------
step "wait for the epilog to tear the guests down on every node (at most ${TEARDOWN_TIMEOUT} s)"
TORN_DOWN=0
if wait "$WATCH_PID"; then
  TORN_DOWN=1
  note "teardown complete on every node"
else
  note "teardown not observed as complete on every node"
fi
WATCH_PID=""

# --------------------------------------------------------------------------------------------------
step "per-phase timing summary"
"$PY" -m slurm_vc.jobwatch report --name "$NAME" --timeline "$WORK/timeline.json" \
  --output "$OUT/slurm-$JOB.out" | sed 's/^/   /'

# --------------------------------------------------------------------------------------------------
step "check that job $JOB left nothing behind (domains, state, overlays, taps, hugepages)"
CLEAN=0
"$PY" -m slurm_vc.jobwatch leaks --name "$NAME" --job "$JOB" --pools-before "$WORK/pools.json" \
  --timeout 30 | sed 's/^/   /'
[ "${PIPESTATUS[0]}" = 0 ] && CLEAN=1

[ "$JOB_OK" = 1 ] || fail "job $JOB ended $STATE with exit code ${EXIT_CODE:-?}"
[ "$TORN_DOWN" = 1 ] && [ "$CLEAN" = 1 ] || fail "job $JOB left something behind (see above)"
exit 0
