# The two commands the README promises, plus a few helpers.  Run as root on Debian 12/13.
VENV := .venv
PY := $(VENV)/bin/python
SLURM_VC := $(VENV)/bin/slurm-vc
NODES ?= 3

.PHONY: deps demo test test-unit test-integration test-e2e lint plugin guest clean-sandbox

deps:
	bash scripts/install-deps.sh

plugin: deps
	$(MAKE) -C spank

guest: deps
	bash guest/build-tiny-guest.sh guest/out

## make demo: bring up a 3-node sandbox, run examples/hello-vcluster.sh in a virtual cluster, tear down.
demo: deps
	bash scripts/demo.sh $(NODES)

## make test: the whole suite (unit, real libvirt/QEMU, real Slurm e2e).
test: deps
	bash scripts/run-tests.sh

test-unit: deps
	$(PY) -m pytest -q tests/unit

test-integration: deps
	$(PY) -m pytest -q -m integration tests/integration

test-e2e: deps
	$(PY) -m pytest -q -m e2e tests/e2e

lint: deps
	$(VENV)/bin/ruff check slurm_vc tests bench
	$(VENV)/bin/ruff format --check slurm_vc tests bench

clean-sandbox:
	-$(SLURM_VC) sandbox down
