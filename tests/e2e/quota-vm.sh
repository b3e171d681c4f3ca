#!/usr/bin/env bash
# Runs a guest test script inside a QEMU VM booted with Debian bookworm's own
# kernel (linux-image-amd64).
#
# Why a VM: project quotas need a kernel with quota support (ext4 `prjquota`
# needs CONFIG_QFMT_V2, XFS needs CONFIG_XFS_QUOTA). The CI host's kernel has
# neither, so no container can mount such a filesystem; the stock Debian
# kernel has both (quota_v2, quota_tree and xfs modules).
#
# The guest does not run systemd: the kernel starts a small /usr/local/bin/
# guest-init written here, which mounts the API filesystems, loads the quota
# modules, runs the guest script, prints `GUEST-EXIT <status>` and powers off.
#
# Usage (as root):   tests/e2e/quota-vm.sh [GUEST_SCRIPT]
# Needs: qemu-system-x86_64 (bookworm's 7.2 or bookworm-backports' 10.0),
#   debootstrap, e2fsprogs >= 1.43 (mkfs.ext4 -d); network on the first run.
# Environment:
#   BUILDDIR_BIN_DIR          where builddird and builddir-ctl are
#                             (default: <repo>/target/release)
#   BUILDDIR_QUOTA_GUEST      the guest script (default: GUEST_SCRIPT, else
#                             <repo>/tests/e2e/quota-guest.sh); installed,
#                             with lib.sh beside it, in
#                             /usr/local/lib/builddird-e2e/ and run as root
#   BUILDDIR_QUOTA_VM_TIMEOUT seconds for the whole VM run (default: 600)
#   BUILDDIR_E2E_CACHE        rootfs cache (default: /var/cache/builddird-e2e)
#   BUILDDIR_E2E_MIRROR       Debian mirror for debootstrap
#                             (default: http://deb.debian.org/debian)
#   BUILDDIR_E2E_ALLOW_SKIP=1 exit 0 (not 1) when the test cannot run here
#   BUILDDIR_E2E_KEEP=1       keep the work dir (disk image, console log)
#
# Output: the guest's console (its `ok N - ...` lines) on stdout.
# Exit status: the guest script's, from its `GUEST-EXIT n` line; 1 if that
# line never came (guest crash, timeout).

set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
bin_dir=${BUILDDIR_BIN_DIR:-$repo/target/release}
guest_script=${BUILDDIR_QUOTA_GUEST:-${1:-$repo/tests/e2e/quota-guest.sh}}
vm_timeout=${BUILDDIR_QUOTA_VM_TIMEOUT:-600}
cache=${BUILDDIR_E2E_CACHE:-/var/cache/builddird-e2e}
mirror=${BUILDDIR_E2E_MIRROR:-http://deb.debian.org/debian}

# The guest. Changing any of these (or initramfs_modules) changes the cache key.
suite=bookworm
variant=minbase
packages=linux-image-amd64,initramfs-tools,kmod,e2fsprogs,xfsprogs,quota,util-linux,procps
# A small initrd (MODULES=list) that can mount a virtio-blk ext4 root: it is
# unpacked on every boot, which matters under TCG.
initramfs_modules=(virtio_pci virtio_blk ext4 crc32c_generic)
cache_key=$(printf '%s\n' "suite=$suite" "variant=$variant" "include=$packages" \
    "initramfs=${initramfs_modules[*]}" "arch=amd64" "v=2" | sha256sum | cut -c1-16)

# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"
fail() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------- preconditions ---
[ "$(id -u)" = 0 ] || skip "must run as root (debootstrap, chroot, mkfs -d of a root-owned tree)"
[ "$(uname -m)" = x86_64 ] || skip "needs an x86_64 host (the guest is Debian amd64)"
for tool in qemu-system-x86_64 debootstrap mkfs.ext4 chroot timeout sha256sum flock; do
    command -v "$tool" >/dev/null \
        || skip "$tool not found (apt-get install --no-install-recommends qemu-system-x86 debootstrap e2fsprogs coreutils util-linux)"
done
for f in "$bin_dir/builddird" "$bin_dir/builddir-ctl"; do
    [ -x "$f" ] || fail "$f missing: run 'cargo build --release --bins' first (or set BUILDDIR_BIN_DIR)"
done
[ -r "$guest_script" ] || fail "guest script $guest_script not found"

# -------------------------------------------------------------- the rootfs ---
# Built once per package list with debootstrap, then copied per run so the
# cache itself is never booted or modified.
mkdir -p "$cache/vm-rootfs"
rootfs_cached=$cache/vm-rootfs/$cache_key
exec 9>"$cache/lock"
flock -w 1800 9 || fail "could not lock $cache/lock within 1800s"
if [ ! -e "$rootfs_cached/.complete" ]; then
    tmp=$rootfs_cached.tmp
    log "debootstrap $suite ($variant + $packages) into $rootfs_cached (first run only)"
    rm -rf --one-file-system "$tmp"
    if ! timeout 1800 debootstrap --variant="$variant" --include="$packages" --arch=amd64 \
            "$suite" "$tmp" "$mirror" > "$cache/vm-debootstrap.log" 2>&1; then
        tail -20 "$cache/vm-debootstrap.log" | sed 's/^/#   /'
        rm -rf --one-file-system "$tmp"
        skip "debootstrap of $suite failed (network/mirror? see $cache/vm-debootstrap.log)"
    fi
    # Most of the kernel's modules are hardware drivers a virtio guest never
    # loads; dropping them halves the per-run copy and image build.
    for kdir in "$tmp"/usr/lib/modules/*; do
        find "$kdir/kernel/drivers" -mindepth 1 -maxdepth 1 ! -name block ! -name virtio \
            ! -name md ! -name char -exec rm -rf {} +
        rm -rf "$kdir/kernel/sound" "$kdir/kernel/net"
        chroot "$tmp" depmod -a "${kdir##*/}"
    done
    echo MODULES=list > "$tmp/etc/initramfs-tools/conf.d/builddird-e2e"
    printf '%s\n' "${initramfs_modules[@]}" >> "$tmp/etc/initramfs-tools/modules"
    if ! chroot "$tmp" update-initramfs -u -k all > "$cache/vm-initramfs.log" 2>&1; then
        sed 's/^/#   /' "$cache/vm-initramfs.log"
        rm -rf --one-file-system "$tmp"
        fail "update-initramfs in the guest rootfs failed"
    fi
    chroot "$tmp" apt-get clean >/dev/null 2>&1
    rm -rf "$tmp"/usr/share/{doc,man,locale} "$tmp"/var/lib/apt/lists/*
    touch "$tmp/.complete"
    rm -rf --one-file-system "$rootfs_cached"
    mv "$tmp" "$rootfs_cached"
fi
flock -u 9
exec 9>&-

# --------------------------------------------------------------- per run ---
work=$(mktemp -d "$cache/vm-run.XXXXXX")
root=$work/root
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "${BUILDDIR_E2E_KEEP:-0}" = 1 ]; then echo "# kept $work"
    else rm -rf --one-file-system "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "copying rootfs to $work"
cp -a "$rootfs_cached" "$root" || fail "cannot copy the rootfs"
rm -f "$root/.complete"
echo builddird-quota-vm > "$root/etc/hostname"
install -m 0755 "$bin_dir/builddird" "$bin_dir/builddir-ctl" "$root/usr/local/bin/"
install -d "$root/usr/local/lib/builddird-e2e"
install -m 0755 "$guest_script" "$root/usr/local/lib/builddird-e2e/quota-guest"
install -m 0644 "$here/lib.sh" "$root/usr/local/lib/builddird-e2e/lib.sh"
cat > "$root/usr/local/bin/guest-init" <<'EOF'
#!/bin/sh
# PID 1 of the quota VM (written by tests/e2e/quota-vm.sh).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root
# The initramfs moves /proc, /sys, /dev and /run over; mount what is missing.
mnt() { mountpoint -q "$3" || mount -t "$1" -o "$2" "$1" "$3"; }
mnt proc nosuid,nodev,noexec /proc
mnt sysfs nosuid,nodev,noexec /sys
mnt devtmpfs mode=0755,nosuid /dev
mkdir -p /dev/pts /dev/shm
mnt devpts gid=5,mode=620 /dev/pts
mnt tmpfs mode=0755,nosuid,nodev /run
mnt tmpfs mode=1777,nosuid,nodev /tmp
hostname -F /etc/hostname
# Built-in on some kernels: then modprobe fails harmlessly.
for m in loop quota_v2 quota_tree xfs; do modprobe "$m" 2>/dev/null; done
echo "# guest: kernel $(uname -r), $(nproc) cpus, root $(findmnt -n -o SOURCE,FSTYPE /), up $(cut -d' ' -f1 /proc/uptime)s"
/usr/local/lib/builddird-e2e/quota-guest
status=$?
sync
echo "GUEST-EXIT $status"
echo o > /proc/sysrq-trigger
sleep 10
poweroff -f
EOF
chmod 0755 "$root/usr/local/bin/guest-init"

# Room for the guest's own loop images in /var/tmp.
used_mb=$(du -sxm "$root" | cut -f1)
size_mb=$((used_mb + used_mb / 5 + 512))
log "making a ${size_mb} MiB ext4 root image (rootfs uses ${used_mb} MiB)"
truncate -s "${size_mb}M" "$work/root.img"
mkfs.ext4 -q -d "$root" -L guestroot "$work/root.img" \
    || fail "mkfs.ext4 -d failed (e2fsprogs >= 1.43 needed)"
# One kernel in the rootfs (linux-image-amd64's); qemu boots it directly.
kernels=("$root"/boot/vmlinuz-*) initrds=("$root"/boot/initrd.img-*)
{ cp "${kernels[-1]}" "$work/vmlinuz" && cp "${initrds[-1]}" "$work/initrd.img"; } \
    || fail "no kernel or initrd in the guest's /boot"
kernel=$work/vmlinuz initrd=$work/initrd.img
rm -rf --one-file-system "$root"

# ------------------------------------------------------------------- boot ---
vm=(qemu-system-x86_64 -m 2048 -smp 2 -nographic -no-reboot -nic none -kernel "$kernel")
append="root=/dev/vda rw console=ttyS0 panic=-1 init=/usr/local/bin/guest-init quiet"

# /dev/kvm can exist and still refuse to run a guest (nested or paravirtual
# hosts), so try for real: the kernel alone, without initrd, prints its banner
# and panics at once (no root), and panic=-1 + -no-reboot end qemu.
accel=(-accel tcg) accel_name=TCG
if [ -w /dev/kvm ]; then
    probe=$(timeout 20 "${vm[@]}" -accel kvm -cpu host -append "console=ttyS0 panic=-1" \
        < /dev/null 2>&1 | tr -d '\r')
    if grep -q 'Linux version' <<<"$probe"; then accel=(-accel kvm -cpu host) accel_name=KVM
    else log "KVM cannot run a guest here ($(grep . <<<"$probe" | tail -1)); falling back"; fi
fi
log "booting ${kernels[-1]##*/} with $accel_name (timeout ${vm_timeout}s)"

# The console, live, without the serial line's CRs and the firmware's
# terminal resets; also kept for parsing.
timeout "$vm_timeout" "${vm[@]}" "${accel[@]}" -initrd "$initrd" -append "$append" \
    -drive "file=$work/root.img,if=virtio,format=raw" < /dev/null 2>&1 \
    | sed -u 's/\r$//; s/\x1bc//g; s/\x1b\[[0-9;?]*[A-Za-z]//g' | tee "$work/console.log"
qemu_rc=${PIPESTATUS[0]}
status=$(sed -n 's/^GUEST-EXIT \([0-9]*\)$/\1/p' "$work/console.log" | tail -1)
if [ -z "$status" ]; then
    [ "$qemu_rc" = 124 ] && log "the VM timed out after ${vm_timeout}s"
    fail "no GUEST-EXIT line from the guest (qemu exit $qemu_rc): it crashed or hung"
fi
log "guest exited $status"
exit "$status"
