#!/bin/sh
# Build the tiny slurm-vc test guest from this machine's Debian packages.
#
#   guest/build-tiny-guest.sh OUT_DIR
#
# Writes OUT_DIR/vmlinuz (the host's linux-image-amd64 kernel) and OUT_DIR/initrd.img (a gzip'd
# newc cpio holding busybox-static, the virtio/iso9660 modules, dropbear and, when installed,
# qemu-guest-agent, plus guest/tiny-init as /init).  The guest reads the slurm-vc seed (see
# slurm_vc/seed.py) from a `cidata` ISO or from vc.* kernel parameters, configures itself and
# prints "SLURM-VC-READY <hostname>".
#
# Inputs are hashed; when nothing changed the build is skipped (a rerun takes ~0.1 s).
# Environment:
#   TINY_GUEST_KERNEL   kernel version to use (default: newest /boot/vmlinuz-*)
#   TINY_GUEST_AGENT    auto (default: pack qemu-ga if installed) | yes | no
#
# Needs: busybox-static, dropbear-bin, cpio, gzip, kmod (modprobe); optionally qemu-guest-agent.
set -eu

usage() { echo "usage: $0 OUT_DIR" >&2; exit 2; }
[ $# -eq 1 ] || usage
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
INIT_SRC=$HERE/tiny-init

die() { echo "build-tiny-guest: $*" >&2; exit 1; }

# --- inputs ---------------------------------------------------------------------------------
if [ -n "${TINY_GUEST_KERNEL:-}" ]; then
    KVER=$TINY_GUEST_KERNEL
else
    # newest installed kernel; sort -V orders 6.1.0-9 before 6.1.0-10
    KVER=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)
fi
[ -n "$KVER" ] || die "no kernel in /boot (apt-get install linux-image-amd64)"
KERNEL=/boot/vmlinuz-$KVER
[ -r "$KERNEL" ] || die "cannot read $KERNEL"
[ -d "/lib/modules/$KVER" ] || die "no /lib/modules/$KVER (modules of linux-image-amd64)"

BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static)"
# The initramfs has no C library for busybox: it must be the static build.
if ldd "$BUSYBOX" >/dev/null 2>&1; then die "$BUSYBOX is dynamically linked (apt-get install busybox-static)"; fi
DROPBEAR=$(command -v dropbear || echo /usr/sbin/dropbear)
DROPBEARKEY=$(command -v dropbearkey || echo /usr/bin/dropbearkey)
[ -x "$DROPBEAR" ] && [ -x "$DROPBEARKEY" ] || die "dropbear not found (apt-get install dropbear-bin)"

QEMU_GA=""
case "${TINY_GUEST_AGENT:-auto}" in
    no) ;;
    yes) QEMU_GA=/usr/sbin/qemu-ga; [ -x "$QEMU_GA" ] || die "qemu-ga not found (apt-get install qemu-guest-agent)" ;;
    auto) [ -x /usr/sbin/qemu-ga ] && QEMU_GA=/usr/sbin/qemu-ga ;;
    *) die "TINY_GUEST_AGENT must be auto, yes or no" ;;
esac

# Drivers the guest needs (the Debian kernel builds them as modules).  Order matters: each
# module's dependencies come first, as `modprobe --show-depends` prints them.
MODULES="virtio_pci virtio_net virtio_blk virtio_console virtio_rng isofs sr_mod ata_piix ahci"
MODPATHS=$(for m in $MODULES; do
        modprobe -S "$KVER" --show-depends "$m" || die "module $m not found for $KVER"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }')

BINS="$DROPBEAR $DROPBEARKEY $QEMU_GA"
# Shared libraries of the dynamic binaries, resolved by the host's loader.
LIBS=$(for b in $BINS; do ldd "$b"; done | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }' | sort -u)

# --- cache ----------------------------------------------------------------------------------
STAMP_INPUTS=$(for f in "$0" "$INIT_SRC" "$KERNEL" "$BUSYBOX" $BINS $LIBS $MODPATHS; do
        sha256sum "$f"
    done; echo "agent=${QEMU_GA:-none} kver=$KVER")
STAMP=$(printf '%s\n' "$STAMP_INPUTS" | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.inputs" ] && [ "$(cat "$OUT/.inputs")" = "$STAMP" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.img" ]; then
    echo "build-tiny-guest: $OUT is up to date"
    exit 0
fi

# --- staging tree ---------------------------------------------------------------------------
mkdir -p "$OUT"
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT INT TERM
R=$STAGE/root
mkdir -p "$R/bin" "$R/lib/modules" "$R/etc/dropbear" "$R/proc" "$R/sys" "$R/dev" "$R/run" \
    "$R/tmp" "$R/mnt/seed" "$R/root" "$R/home" "$R/var/log" "$R/usr"
chmod 1777 "$R/tmp"
chmod 700 "$R/root"
ln -s bin "$R/sbin"
ln -s ../bin "$R/usr/bin"
ln -s ../bin "$R/usr/sbin"
ln -s ../run "$R/var/run"

cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$R/bin/$applet"
done
for b in $BINS; do cp "$b" "$R/bin/"; done
for lib in $LIBS; do
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done
# The loader is found at /lib64/ld-linux-x86-64.so.2 (merged /usr on the host: copy the real path too).
if [ ! -e "$R/lib64/ld-linux-x86-64.so.2" ] && [ -e /lib64/ld-linux-x86-64.so.2 ]; then
    mkdir -p "$R/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
fi

: > "$R/etc/modules.order"
for p in $MODPATHS; do
    name=$(basename "$p")
    case "$name" in
        *.ko) cp "$p" "$R/lib/modules/$name" ;;
        *.ko.xz) xz -dc "$p" > "$R/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -dqc "$p" > "$R/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *) die "unexpected module file $p" ;;
    esac
    echo "$name" >> "$R/etc/modules.order"
done

cp "$INIT_SRC" "$R/init"
chmod 755 "$R/init"
cat > "$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat > "$R/etc/group" <<'EOF'
root:x:0:
EOF
# '*' = no password login, but not a locked account (dropbear refuses '!' accounts).
echo 'root:*:19000:0:99999:7:::' > "$R/etc/shadow"
chmod 600 "$R/etc/shadow"
echo /bin/sh > "$R/etc/shells"
# busybox init runs after /init has configured the guest; it only reaps orphans and handles
# poweroff/reboot.  No console shell: the console may be a log file.
cat > "$R/etc/inittab" <<'EOF'
::ctrlaltdel:/bin/reboot -f
::shutdown:/bin/umount -a -r
EOF
echo "agent=${QEMU_GA:+yes}" > "$R/etc/slurm-vc-tiny-guest"

# --- pack -----------------------------------------------------------------------------------
# Sorted names and fixed mtimes: the same inputs give the same bytes.
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 > "$STAGE/initrd.img"
cp "$KERNEL" "$STAGE/vmlinuz"
mv -f "$STAGE/initrd.img" "$OUT/initrd.img"
mv -f "$STAGE/vmlinuz" "$OUT/vmlinuz"
echo "$STAMP" > "$OUT/.inputs"
echo "build-tiny-guest: built $OUT (kernel $KVER, initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB, agent ${QEMU_GA:-none})"
