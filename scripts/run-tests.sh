#!/usr/bin/env bash
# The whole suite: lint, then unit + integration (real libvirtd/QEMU) + e2e (real Slurm sandbox) in one
# pytest run so CI sees one summary line.  Needs root for integration and e2e tests.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.venv

echo "== lint (ruff)"
$VENV/bin/ruff check slurm_vc tests bench guest/build-null-guest.py || exit 1
$VENV/bin/ruff format --check slurm_vc tests bench guest/build-null-guest.py || exit 1

echo "== build the SPANK plugin and the test guests"
make -s -C spank || exit 1
bash guest/build-tiny-guest.sh guest/out || exit 1
$VENV/bin/python guest/build-null-guest.py guest/out || exit 1

echo "== pytest"
$VENV/bin/python -m pytest -ra -p no:cacheprovider --timeout=900 tests "$@"
rc=$?
# pytest exit 5 = no tests collected: that is a failure of the suite, not a pass.
exit $rc
