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
	$(PY) guest/build-null-guest.py guest/out

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
	$(VENV)/bin/ruff check slurm_vc tests bench guest/build-null-guest.py
	$(VENV)/bin/ruff format --check slurm_vc tests bench guest/build-null-guest.py

clean-sandbox:
	-$(SLURM_VC) sandbox down

## make install: what the Debian and RPM packages install (DESTDIR-aware).
PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3
# Where $(PYTHON) looks for packages under $(PREFIX) on Debian (/usr/local/lib/python3.X/dist-packages);
# the packages set it (Debian: /usr/lib/python3/dist-packages, RPM: %{python3_sitelib}).
PYTHON_SITE ?= $(PREFIX)/lib/$(shell $(PYTHON) -c 'import sys; print("python%d.%d" % sys.version_info[:2])')/dist-packages
SLURM_PLUGIN_DIR ?= /usr/lib/x86_64-linux-gnu/slurm-wlm
SYSTEMD_UNIT_DIR ?= /lib/systemd/system
LIBEXEC_DIR ?= $(PREFIX)/libexec/slurm-vc
SHARE_DIR ?= $(PREFIX)/share/slurm-vc

.PHONY: install
install:
	install -d $(DESTDIR)$(PYTHON_SITE) $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LIBEXEC_DIR) \
		$(DESTDIR)$(SLURM_PLUGIN_DIR) $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(SHARE_DIR) \
		$(DESTDIR)/var/lib/slurm-vc
	tar -cf - --exclude=__pycache__ --exclude='*.pyc' slurm_vc | tar -xf - -C $(DESTDIR)$(PYTHON_SITE)
	printf '#!%s -I\nimport sys\nfrom slurm_vc.cli import main\nsys.exit(main())\n' $(PYTHON) \
		> $(DESTDIR)$(PREFIX)/bin/slurm-vc
	chmod 755 $(DESTDIR)$(PREFIX)/bin/slurm-vc
	for f in prolog/* epilog/*; do \
		sed -e 's|@PYTHON@|$(PYTHON)|g' -e 's|@LIBEXEC_DIR@|$(LIBEXEC_DIR)|g' $$f \
			> $(DESTDIR)$(LIBEXEC_DIR)/$$(basename $$f); \
		chmod 755 $(DESTDIR)$(LIBEXEC_DIR)/$$(basename $$f); \
	done
	install -m 755 spank/slurm_vc.so $(DESTDIR)$(SLURM_PLUGIN_DIR)/slurm_vc.so
	install -m 644 packaging/systemd/slurm-vc-gc.service packaging/systemd/slurm-vc-gc.timer \
		$(DESTDIR)$(SYSTEMD_UNIT_DIR)/
	sed -i 's|/usr/bin/slurm-vc|$(PREFIX)/bin/slurm-vc|' $(DESTDIR)$(SYSTEMD_UNIT_DIR)/slurm-vc-gc.service
	install -m 644 packaging/vcluster.toml.example packaging/plugstack.conf.example \
		packaging/slurm.conf.snippet $(DESTDIR)$(SHARE_DIR)/
