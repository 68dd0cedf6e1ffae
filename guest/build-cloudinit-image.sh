#!/bin/sh
# Build a Debian guest image with Debian's own cloud-init, to prove the slurm-vc seed with the
# real cloud-init (tests/integration/test_cloudinit_seed.py).
#
#   guest/build-cloudinit-image.sh OUT_DIR
#
# Writes OUT_DIR/debian-cloudinit.qcow2 (ext4 root file system, no partition table: boot it
# with root=/dev/vda), OUT_DIR/vmlinuz and OUT_DIR/initrd.img (the image's own kernel and
# initramfs, for direct kernel boot).  Cached: when the script, the suite and the mirror are
# unchanged and the outputs exist, nothing is done.  A build takes ~2-4 minutes.
#
# Environment:
#   CLOUDINIT_SUITE    Debian suite (default bookworm)
#   CLOUDINIT_MIRROR   Debian mirror URI (default: the one apt uses here, see debian-mirror.py)
#   CLOUDINIT_BOOTSTRAP  mmdebstrap (default when installed) or debootstrap
#
# Needs root, mmdebstrap (or debootstrap), e2fsprogs >= 1.43 (mkfs.ext4 -d), qemu-utils.
set -eu

[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=${CLOUDINIT_SUITE:-bookworm}
MIRROR=${CLOUDINIT_MIRROR:-$(python3 "$HERE/debian-mirror.py")}
die() { echo "build-cloudinit-image: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (chroot, device nodes)"

# python3-cffi-backend is a dependency, named because debootstrap cannot resolve the virtual
# package (python3-cffi-backend-api-max) through which python3-cryptography asks for it.
PACKAGES="linux-image-amd64,initramfs-tools,systemd-sysv,udev,dbus,cloud-init,ifupdown,netbase,\
openssh-server,iproute2,iputils-ping,net-tools,qemu-guest-agent,python3-cffi-backend"

STAMP=$( (sha256sum "$0"; echo "$SUITE $MIRROR $PACKAGES") | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.inputs" ] && [ "$(cat "$OUT/.inputs")" = "$STAMP" ] && [ -f "$OUT/debian-cloudinit.qcow2" ] \
    && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
    echo "build-cloudinit-image: $OUT is up to date"
    exit 0
fi

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
ROOT=$WORK/root

echo "build-cloudinit-image: $SUITE from $MIRROR"
BOOTSTRAP=${CLOUDINIT_BOOTSTRAP:-$(command -v mmdebstrap >/dev/null && echo mmdebstrap || echo debootstrap)}
if [ "$BOOTSTRAP" = mmdebstrap ] && command -v mmdebstrap >/dev/null; then
    mmdebstrap --quiet --variant=minbase --components=main --include="$PACKAGES" \
        "$SUITE" "$ROOT" "$MIRROR"
elif [ "$BOOTSTRAP" = debootstrap ] && command -v debootstrap >/dev/null; then
    if ! debootstrap --variant=minbase --components=main --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
        >"$WORK/debootstrap.out" 2>&1; then
        tail -n 20 "$WORK/debootstrap.out" "$ROOT/debootstrap/debootstrap.log" >&2 2>/dev/null
        die "debootstrap failed"
    fi
else
    die "$BOOTSTRAP is not installed (apt-get install mmdebstrap, or debootstrap)"
fi

# --- make it a clonable cloud image ------------------------------------------------------------
# Only NoCloud (the seed ISO); otherwise cloud-init waits on metadata URLs of other clouds.
# minbase has no `locales`: cloud-init's locale module would fail (update-locale) and mark the
# boot as an error, so it is switched off.
cat > "$ROOT/etc/cloud/cloud.cfg.d/90-slurm-vc.cfg" <<'EOF'
datasource_list: [NoCloud, None]
locale: "false"
EOF
# Not needed in a throw-away guest, and 8 s of TCG time at boot.
ln -sf /dev/null "$ROOT/etc/systemd/system/e2scrub_reap.service"
# Every clone must generate its own SSH host keys (cloud-init's ssh module does, before sshd).
rm -f "$ROOT"/etc/ssh/ssh_host_*
# An empty machine-id gives every clone its own at boot; systemd-firstboot would then prompt
# on the console and wait, so it is masked.
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
ln -sf /dev/null "$ROOT/etc/systemd/system/systemd-firstboot.service"
echo debian > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' > "$ROOT/etc/fstab"
: > "$ROOT/etc/resolv.conf"
# cloud-init renders ifupdown configuration into interfaces.d on Debian 12.
cat > "$ROOT/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
EOF
# No root password: login only with the key the seed brings.
chroot "$ROOT" passwd -l root >/dev/null
# Keep __pycache__ (deleting it makes cloud-init's first boot much slower); drop apt lists.
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin

KVER=$(ls "$ROOT"/boot/vmlinuz-* | sed 's|.*/vmlinuz-||' | sort -V | tail -n 1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] || die "the image has no kernel/initramfs"
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"

# --- file system image ----------------------------------------------------------------------------
USED_MB=$(du -sm "$ROOT" | cut -f1)
SIZE_MB=$((USED_MB + USED_MB / 2 + 512))
mkfs.ext4 -q -L root -d "$ROOT" "$WORK/root.raw" "${SIZE_MB}M"
qemu-img convert -O qcow2 "$WORK/root.raw" "$WORK/debian-cloudinit.qcow2"

mv -f "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/debian-cloudinit.qcow2" "$OUT/"
echo "$STAMP" > "$OUT/.inputs"
echo "build-cloudinit-image: built $OUT/debian-cloudinit.qcow2 ($(du -m "$OUT/debian-cloudinit.qcow2" | cut -f1) MiB, kernel $KVER)"
