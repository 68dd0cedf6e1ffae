#!/usr/bin/env bash
# Install everything slurm-vc's demo and test suite need on a fresh Debian 12/13 machine (as root):
# Debian packages (Slurm, munge, libvirt, QEMU, guest-building tools) and a virtualenv in .venv.
# Idempotent: packages already present are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # Slurm and munge
  slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev
  # libvirt and QEMU
  libvirt-daemon-system libvirt-clients libvirt-dev pkg-config qemu-system-x86 qemu-utils libxml2-utils
  # the test guest and the cloud-init test image
  linux-image-amd64 busybox-static dropbear-bin openssh-client qemu-guest-agent debootstrap mmdebstrap xorriso genisoimage cpio e2fsprogs
  # host networking
  iproute2 nftables bridge-utils iperf3 psmisc procps
  # building the plugin, the Python venv and the packages
  gcc make python3-dev python3-venv rpm rpmlint dpkg-dev debhelper fakeroot
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # libvirt-daemon-system's maintainer scripts try to start services; without systemd that is harmless.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The system Python, not a per-user one (pyenv under /root): job users must be able to run slurm-vc.
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
# A venv made from another interpreter (an older checkout's, or a pyenv one job users cannot run)
# is rebuilt.
venv_home=$(sed -n 's/^home = //p' .venv/pyvenv.cfg 2>/dev/null || true)
if [ -x .venv/bin/python ] && [ "$venv_home" != "$(dirname "$(readlink -f "$PYTHON")")" ]; then
  echo "install-deps: rebuilding .venv on $PYTHON (it was made from $venv_home)"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import slurm_vc, libvirt, lxml, pydantic, psutil, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
  # pip's build chatter (setuptools deprecation notices of dependencies) goes to a log, shown on failure.
  if ! .venv/bin/pip install -q -e '.[test,libvirt]' > .venv/pip-install.log 2>&1; then
    cat .venv/pip-install.log >&2
    echo "install-deps: pip install failed (log above, also in .venv/pip-install.log)" >&2
    exit 1
  fi
  touch .venv/.installed
fi
echo "install-deps: ready (.venv/bin/slurm-vc)"
