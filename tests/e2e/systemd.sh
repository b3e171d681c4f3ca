#!/usr/bin/env bash
# End-to-end test of builddird under a real systemd.
#
# Boots a minimal Debian bookworm with `systemd-nspawn --boot` (systemd 252 as
# PID 1 in the container), installs the project's Debian package into it
# (`apt install ./builddird_*.deb`: binaries, units, sysusers snippet, the
# postinst enabling the socket), and checks socket activation, Type=notify,
# the mount, the noexec-/tmp scenario, the journal audit trail, the watchdog,
# restart behaviour, `apt remove` (no mount, no daemon left), a clean
# teardown, and then the same package on the same root without systemd as
# PID 1 (install.sh --deb starts the daemon by hand; apt remove stops it).
#
# Usage (as root):   tests/e2e/systemd.sh
# Environment:
#   BUILDDIR_BIN_DIR          where builddird and builddir-ctl are
#                             (default: <repo>/target/release); the .deb
#                             is built from them (packaging/deb/build.sh)
#   BUILDDIR_E2E_CACHE        rootfs cache (default: /var/cache/builddird-e2e)
#   BUILDDIR_E2E_MIRROR       Debian mirror for debootstrap
#                             (default: http://deb.debian.org/debian)
#   BUILDDIR_E2E_ALLOW_SKIP=1 exit 0 (not 1) when the test cannot run here
#   BUILDDIR_E2E_KEEP=1       keep the container's work dir after the run
#
# Output: `ok N - ...` / `not ok N - ...` lines, then `N passed, M failed`.
# Exit status: 0 only if every check passed.

set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
bin_dir=${BUILDDIR_BIN_DIR:-$repo/target/release}
cache=${BUILDDIR_E2E_CACHE:-/var/cache/builddird-e2e}
mirror=${BUILDDIR_E2E_MIRROR:-http://deb.debian.org/debian}

# The guest. Changing any of these changes the cache key.
suite=bookworm
variant=minbase
packages=dbus,procps,systemd,systemd-sysv
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
cache_key=$(printf '%s\n' "suite=$suite" "variant=$variant" "include=$packages" "arch=$arch" "v=1" \
    | sha256sum | cut -c1-16)

# Where the package puts the binaries (its unit's ExecStart=).
guest_bin=/usr/bin
guest_user=builder
guest_root=/var/lib/builddird

# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

# ---------------------------------------------------------- preconditions ---
[ "$(id -u)" = 0 ] || skip "must run as root (systemd-nspawn, debootstrap, mounts)"
for tool in systemd-nspawn debootstrap nsenter timeout sha256sum flock; do
    command -v "$tool" >/dev/null || skip "$tool not found (apt-get install systemd-container debootstrap util-linux coreutils)"
done
for b in builddird builddir-ctl; do
    if [ ! -x "$bin_dir/$b" ]; then
        echo "error: $bin_dir/$b missing: run 'cargo build --release --bins' first (or set BUILDDIR_BIN_DIR)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
done

# -------------------------------------------------------------- the rootfs ---
# Cached per package list; built once with debootstrap, then copied per run so
# the cache itself is never booted or modified.
mkdir -p "$cache/rootfs"
rootfs_cached=$cache/rootfs/$cache_key
exec 9>"$cache/lock"
if ! flock -w 900 9; then
    echo "error: could not lock $cache/lock within 900s" >&2
    exit 1
fi
if [ ! -e "$rootfs_cached/.complete" ]; then
    log "debootstrap $suite ($variant + $packages) into $rootfs_cached (first run only)"
    rm -rf --one-file-system "$rootfs_cached.tmp"
    if ! timeout 1200 debootstrap --variant="$variant" --include="$packages" --arch="$arch" \
            "$suite" "$rootfs_cached.tmp" "$mirror" > "$cache/debootstrap.log" 2>&1; then
        tail -20 "$cache/debootstrap.log" | diag
        rm -rf --one-file-system "$rootfs_cached.tmp"
        skip "debootstrap of $suite failed (network/mirror? see $cache/debootstrap.log)"
    fi
    # Generic, run-independent preparation.
    rm -f "$rootfs_cached.tmp/etc/machine-id"
    chroot "$rootfs_cached.tmp" apt-get clean >/dev/null 2>&1 || true
    touch "$rootfs_cached.tmp/.complete"
    rm -rf --one-file-system "$rootfs_cached"
    mv "$rootfs_cached.tmp" "$rootfs_cached"
fi
flock -u 9
exec 9>&-

# ------------------------------------------------------- per-run container ---
machine="bdd-e2e-$$-$RANDOM"
work=$(mktemp -d "$cache/run.XXXXXX")
root=$work/root
nspawn_pid=
leader=
ctl_bg_pid=
propagate_dir=/run/systemd/nspawn/propagate/$machine
host_pid1=$(cat /proc/1/comm 2>/dev/null || echo '?')

kill_container() {
    # Orderly first: SIGTERM makes nspawn ask the guest's systemd to power off.
    [ -n "$nspawn_pid" ] || return 0
    kill -0 "$nspawn_pid" 2>/dev/null || return 0
    kill -TERM "$nspawn_pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || return 0; sleep 0.1; done
    log "nspawn did not exit after SIGTERM; SIGKILL"
    kill -KILL "$nspawn_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$nspawn_pid" 2>/dev/null || return 0; sleep 0.1; done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$ctl_bg_pid" ] && kill -KILL "$ctl_bg_pid" 2>/dev/null
    kill_container
    wait 2>/dev/null
    # Anything still mounted below the work dir (should be nothing).
    if [ -d "$work" ]; then
        grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do
            umount -l "$m" 2>/dev/null
        done
    fi
    [ -d "$propagate_dir" ] && rmdir "$propagate_dir" 2>/dev/null
    if [ "${BUILDDIR_E2E_KEEP:-0}" = 1 ]; then
        echo "# kept $work"
    elif [ -d "$work" ]; then
        # --one-file-system: never delete through a mount that leaked.
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "copying rootfs to $work"
cp -a "$rootfs_cached" "$root" || { echo "error: cannot copy the rootfs" >&2; exit 1; }
rm -f "$root/.complete"
# A fresh identity per run.
if command -v systemd-id128 >/dev/null; then systemd-id128 new > "$root/etc/machine-id"
else tr -d '-' < /proc/sys/kernel/random/uuid > "$root/etc/machine-id"; fi
echo "$machine" > "$root/etc/hostname"

# The project: its Debian package, installed once the guest runs (its
# postinst needs a running systemd), and install.sh for the run without it.
deb=$("$repo/packaging/deb/build.sh" "$bin_dir" "$work/deb" | tail -1) \
    || { echo "error: packaging/deb/build.sh failed" >&2; exit 1; }
guest_deb=/var/tmp/$(basename "$deb")
cp "$deb" "$root$guest_deb"
install -m 0755 "$repo/install.sh" "$root/var/tmp/install.sh"
# Quiet, bounded boot: no getty on the console.
ln -sf /dev/null "$root/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@.service"

# ------------------------------------------------------------------ boot ---
# shellcheck disable=SC2054  # the commas are mount options
nspawn_args=(
    --quiet --boot
    --directory="$root"
    --machine="$machine"
    --private-network
    # The hardened-host situation this project exists for: /tmp is noexec.
    --tmpfs=/tmp:mode=1777,nosuid,nodev,noexec
    --console=read-only
    --register=no
    # nspawn's own seccomp list lacks quotactl_fd (a host has no such
    # filter): let it through, so the unit's SystemCallFilter= is what the
    # test sees.
    --system-call-filter=quotactl_fd
)
# Without systemd as PID 1 on the host (CI sandboxes, containers) nspawn
# cannot create a scope unit over D-Bus; it then stays in our own cgroup.
if [ ! -d /run/systemd/system ]; then
    nspawn_args+=(--keep-unit)
fi

log "booting $machine (host PID 1: $host_pid1)"
systemd-nspawn "${nspawn_args[@]}" > "$work/console.log" 2>&1 &
nspawn_pid=$!

# The container's PID 1 is the child of nspawn that is PID 1 in its own
# PID namespace.
find_leader() {
    local p
    for p in $(cat /proc/"$nspawn_pid"/task/*/children 2>/dev/null || pgrep -P "$nspawn_pid"); do
        if awk '/^NSpid:/ { exit !($NF == 1 && NF > 2) }' "/proc/$p/status" 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}
for _ in $(seq 1 300); do
    leader=$(find_leader) && break
    kill -0 "$nspawn_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$leader" ]; then
    tail -30 "$work/console.log" | diag
    not_ok "container booted (no container PID 1 found)"
    echo "$passed passed, $failed failed"
    exit 1
fi
container_mntns=$(readlink "/proc/$leader/ns/mnt")
container_pidns=$(readlink "/proc/$leader/ns/pid")

genv=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_COLORS=0 SYSTEMD_PAGER=)
# gexec CMD...: run CMD as root in the guest (all of PID 1's namespaces).
gexec() { timeout 60 nsenter --target "$leader" --all --root --wd "${genv[@]}" "$@"; }
# guser CMD...: run CMD in the guest as the unprivileged user.
guser() {
    timeout 60 nsenter --target "$leader" --all --root --wd "${genv[@]}" \
        setpriv --reuid="$guest_user" --regid="$guest_user" --init-groups --reset-env -- "$@"
}
# exec_mount_opts OPTS: nosuid and nodev set, noexec clear.
exec_mount_opts() { [[ ,$1, == *,nosuid,* && ,$1, == *,nodev,* && ,$1, != *,noexec,* ]]; }
gone() { ! kill -0 "$1" 2>/dev/null; }
prop() { gexec systemctl show -P "$2" "$1" 2>/dev/null; }
# wait_for SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do [ "$SECONDS" -ge "$deadline" ] && return 1; sleep 0.2; done
}

# systemctl needs PID 1's private socket; it appears a moment after boot.
wait_for 60 gexec test -S /run/systemd/private
state=$(gexec timeout 90 systemctl is-system-running --wait 2>&1)
log "guest booted: $state"
if [ "$state" != running ]; then
    gexec systemctl --failed --no-legend 2>&1 | diag
fi
check "guest systemd reached running (is-system-running: $state)" \
    test "$state" = running

# ------------------------------------------------------ 0. the package ---
out=$(gexec apt-get install -y -q "$guest_deb" 2>&1); rc=$?
[ "$rc" = 0 ] || printf '%s\n' "$out" | tail -20 | diag
check "0. apt install ./$(basename "$deb") succeeds in the guest [rc=$rc]" test "$rc" = 0
enabled=$(gexec systemctl is-enabled builddird.socket 2>&1)
check "0. postinst enabled builddird.socket [$enabled]" test "$enabled" = enabled
grp=$(gexec getent group builddir 2>&1)
check "0. postinst created the group builddir (systemd-sysusers) [$grp]" grep -q '^builddir:' <<<"$grp"
exec_start=$(prop builddird.service ExecStart)
check "0. the packaged unit runs $guest_bin/builddird" grep -q "path=$guest_bin/builddird " <<<"$exec_start"

# -------------------------------------------------------- 1. socket idle ---
sock_state=$(prop builddird.socket ActiveState)
svc_state=$(prop builddird.service ActiveState)
check "1. builddird.socket is active (listening) after boot [$sock_state]" test "$sock_state" = active
check "1. builddird.service is inactive until the first connection [$svc_state]" test "$svc_state" = inactive
sock_perm=$(gexec stat -c '%a %U %G %F' /run/builddird.sock 2>&1)
check "1. /run/builddird.sock is 660 root:builddir socket [$sock_perm]" test "$sock_perm" = "660 root builddir socket"

# The unprivileged user (group builddir comes from the sysusers snippet,
# applied at boot by systemd-sysusers).
gexec useradd --create-home --shell /bin/sh --groups builddir "$guest_user" >/dev/null 2>&1
guest_uid=$(gexec id -u "$guest_user")
gexec useradd --create-home --shell /bin/sh outsider >/dev/null 2>&1

# ---------------------------------------------------- 2. socket activation ---
out=$(guser "$guest_bin/builddir-ctl" status 2>&1); rc=$?
[ "$rc" = 0 ] || printf '%s\n' "$out" | diag
check "2. first 'builddir-ctl status' by uid $guest_uid succeeds (socket activation)" test "$rc" = 0
wait_for 10 test "$(prop builddird.service SubState)" = running
svc="$(prop builddird.service ActiveState)/$(prop builddird.service SubState)"
check "2. builddird.service is active (running) — Type=notify, so READY=1 was sent [$svc]" \
    test "$svc" = active/running
if [ "$svc" != active/running ]; then
    gexec journalctl --no-pager -o cat -n 30 -u builddird.service 2>&1 | diag
fi
status_text=$(prop builddird.service StatusText)
echo "#   StatusText=$status_text"
check "2. StatusText shows counts" grep -Eq '[0-9]' <<<"$status_text"
main_pid=$(prop builddird.service MainPID)
d_mntns=$(gexec readlink "/proc/$main_pid/ns/mnt")
p1_mntns=$(gexec readlink /proc/1/ns/mnt)
check "2. daemon runs in the host (PID 1) mount namespace [$d_mntns]" \
    test -n "$d_mntns" -a "$d_mntns" = "$p1_mntns"
d_netns=$(gexec readlink "/proc/$main_pid/ns/net"); p1_netns=$(gexec readlink /proc/1/ns/net)
check "2. daemon has its own network namespace (PrivateNetwork=yes)" \
    test -n "$d_netns" -a "$d_netns" != "$p1_netns"
capbnd=$(gexec awk '/^CapBnd:/ {print $2}' "/proc/$main_pid/status")
# CAP_CHOWN(0) DAC_OVERRIDE(1) DAC_READ_SEARCH(2) FOWNER(3) SYS_ADMIN(21)
check "2. daemon capability bounding set is exactly the five caps [$capbnd]" \
    test "$capbnd" = 000000000020000f
out=$(gexec "$guest_bin/builddir-ctl" status 2>&1) || true
printf '%s\n' "$out" | head -20 | diag
# The quota probe runs at every start: under the shipped filter it must get
# an answer from the kernel, not EPERM from seccomp.
check "2. the unit's system call filter lets quotactl_fd through" \
    bash -c '! grep -q "quotactl_fd was refused" <<<"$1" && grep -q "leases: dir" <<<"$1"' _ "$out"
mnt=$(gexec findmnt -n -o FSTYPE,OPTIONS --mountpoint "$guest_root" 2>&1)
echo "#   findmnt $guest_root: $mnt"
check "2. $guest_root is a mount point in the host namespace with nosuid,nodev and not noexec" \
    exec_mount_opts "$(awk '{print $2}' <<<"$mnt")"
out=$(guser "$guest_bin/builddir-ctl" --json status 2>&1) || true
check "2. builddir-ctl --json status is JSON" grep -q '^[[:space:]]*[{[]' <<<"$out"
out=$(gexec setpriv --reuid=outsider --regid=outsider --init-groups --reset-env -- \
    "$guest_bin/builddir-ctl" status 2>&1); rc=$?
echo "#   outsider (not in group builddir): rc=$rc: $(head -1 <<<"$out")"
denied=no; [ "$rc" != 0 ] && grep -qi "permission denied" <<<"$out" && denied=yes
check "2. a user outside group builddir cannot connect (SocketMode=0660)" test "$denied" = yes

# ------------------------------------------------------ 3. build dir, noexec ---
# shellcheck disable=SC2016
build_script='
set -u
echo "PWD=$PWD"
echo "TMPDIR=${TMPDIR:-}"
echo "STAT=$(stat -c "%a %U" .)"
echo "MNT=$(findmnt -n -o OPTIONS -T "$PWD")"
cp /bin/true ./built-tool && ./built-tool && echo "EXEC_BUILD_DIR=ok"
cp /bin/true /tmp/built-tool.$$
/tmp/built-tool.$$ 2>/tmp/err.$$; echo "EXEC_TMP_RC=$?"
grep -qi "permission denied" /tmp/err.$$ && echo "EXEC_TMP=permission-denied"
rm -f /tmp/built-tool.$$ /tmp/err.$$
exit 0
'
out=$(guser "$guest_bin/builddir-ctl" run --name e2e-noexec -- sh -c "$build_script" 2>&1); rc=$?
printf '%s\n' "$out" | diag
field() { sed -n "s/^$1=//p" <<<"$out" | head -1; }
lease_path=$(field PWD)
lease_id=$(sed -n 's|^.*/b/\([0-9a-f]*\)/build$|\1|p' <<<"$lease_path")
check "3. builddir-ctl run exits 0" test "$rc" = 0
check "3. cwd is a build dir under $guest_root/b/<id>/build [$lease_path]" test -n "$lease_id"
check "3. handed-out path is <= 48 bytes [${#lease_path}]" test "${#lease_path}" -le 48
check "3. TMPDIR is the build dir" test -n "$lease_path" -a "$(field TMPDIR)" = "$lease_path"
check "3. build dir is mode 700, owned by $guest_user [$(field STAT)]" test "$(field STAT)" = "700 $guest_user"
check "3. a binary copied into the build dir executes" test "$(field EXEC_BUILD_DIR)" = ok
check "3. the same binary in /tmp (noexec) fails: permission denied, rc 126 [rc=$(field EXEC_TMP_RC)]" \
    test "$(field EXEC_TMP)" = permission-denied -a "$(field EXEC_TMP_RC)" = 126
lmnt=$(field MNT)
check "3. build dir's mount has nosuid,nodev and not noexec [$lmnt]" \
    exec_mount_opts "$lmnt"
check "3. build dir is gone after run" gexec test ! -e "${lease_path:-/nonexistent-lease}"
guser "$guest_bin/builddir-ctl" run -- sh -c 'exit 7' >/dev/null 2>&1; rc=$?
check "3. builddir-ctl run passes the exit status through (7) [$rc]" test "$rc" = 7

# --------------------------------------------------------- 4. audit trail ---
# Structured fields LEASE_ID, UID, PID, PATH as journald fields.
journal_json() { gexec journalctl -o json --no-pager -u builddird.service 2>/dev/null; }
journal_has() {
    journal_json | grep -F "\"LEASE_ID\":\"$lease_id\"" | grep -Fq "\"UID\":\"$guest_uid\""
}
if [ -n "$lease_id" ] && wait_for 10 journal_has; then
    ok "4. journal has a builddird record with LEASE_ID=$lease_id and UID=$guest_uid as fields"
else
    rec=$(journal_json | grep -F "$lease_id" | head -1)
    fields=$(grep -oE '"[A-Z_]*(LEASE|UID|PID|PATH)[A-Z_]*"' <<<"$rec" | sort -u | tr '\n' ' ')
    echo "#   fields in a record naming the lease: ${fields:-none}"
    [[ $fields == *F_LEASE_ID* ]] && echo "#   hint: F_ is tracing-journald's default field prefix; the daemon should use .with_field_prefix(None)"
    not_ok "4. journal has a builddird record with LEASE_ID=${lease_id:-?} and UID=$guest_uid as fields"
fi
# lease_msgs ID: the MESSAGE of every builddird record that mentions ID.
lease_msgs() {
    [ -n "$1" ] || return 0
    journal_json | grep -F "$1" | grep -o '"MESSAGE":"[^"]*"' | tr '\n' ' '
}
msgs=$(lease_msgs "$lease_id")
echo "#   records for the lease: ${msgs:-none}"
check "4. allocation and release are both logged for the lease" \
    test "$(grep -c . <<<"$(tr ' ' '\n' <<<"$msgs" | grep -Ei 'allocat|releas')")" -ge 2

# ------------------------------------------------------------ 5. watchdog ---
mkdir -p "$root/etc/systemd/system/builddird.service.d"
cat > "$root/etc/systemd/system/builddird.service.d/e2e-watchdog.conf" <<'EOF'
# tests/e2e/systemd.sh: a short watchdog so a hang is caught quickly.
[Service]
WatchdogSec=3s
TimeoutAbortSec=5s
LimitCORE=0
EOF
gexec systemctl daemon-reload
gexec systemctl restart builddird.service
wait_for 15 test "$(prop builddird.service SubState)" = running
pid_before=$(prop builddird.service MainPID)
restarts_before=$(prop builddird.service NRestarts)
wd=$(prop builddird.service WatchdogUSec)
check "5. drop-in WatchdogSec=3s is in effect [$wd]" test "$wd" = 3s
valid_pid() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 1 ]; }
# A healthy daemon keeps feeding the watchdog.
sleep 7
healthy=no
valid_pid "$pid_before" && [ "$(prop builddird.service MainPID)" = "$pid_before" ] \
    && [ "$(prop builddird.service NRestarts)" = "$restarts_before" ] && healthy=yes
check "5. healthy daemon survives 2x WatchdogSec (keeps sending WATCHDOG=1)" test "$healthy" = yes
log "SIGSTOP daemon pid $pid_before"
# Never `kill -STOP 0` (our own process group) if the service is not running.
valid_pid "$pid_before" && gexec kill -STOP "$pid_before"
restarted() {
    local p; p=$(prop builddird.service MainPID)
    [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$pid_before" ] && [ "$(prop builddird.service SubState)" = running ]
}
if wait_for 40 restarted; then
    ok "5. hung daemon restarted by the watchdog (MainPID $pid_before -> $(prop builddird.service MainPID), active)"
else
    gexec journalctl --no-pager -n 15 -u builddird.service 2>&1 | diag
    not_ok "5. hung daemon restarted by the watchdog (MainPID still $(prop builddird.service MainPID), $(prop builddird.service SubState))"
fi
check "5. NRestarts incremented ($restarts_before -> $(prop builddird.service NRestarts))" \
    test "$(prop builddird.service NRestarts)" -gt "${restarts_before:-0}"
watchdog_logged() { gexec journalctl --no-pager -u builddird.service 2>/dev/null | grep -qi 'watchdog timeout'; }
check "5. journal records the watchdog timeout" watchdog_logged
out=$(guser "$guest_bin/builddir-ctl" status 2>&1); rc=$?
check "5. the restarted daemon serves requests" test "$rc" = 0

# Restart with a lease held: the lease's connection sits
# in systemd's file descriptor store, so the restart is invisible to the
# build — its dir stays, it stays listed, and its release after the restart
# deletes it.
gexec rm -f /tmp/e2e-held
guser "$guest_bin/builddir-ctl" run --name e2e-held -- sh -c 'echo "$PWD" > /tmp/e2e-held; sleep 12; test -d "$PWD"' \
    > "$work/held.out" 2>&1 &
ctl_bg_pid=$!
held_path=
wait_for 15 gexec test -s /tmp/e2e-held && held_path=$(gexec cat /tmp/e2e-held)
held_id=$(sed -n 's|^.*/b/\([0-9a-f]*\)/build$|\1|p' <<<"$held_path")
listed() { gexec "$guest_bin/builddir-ctl" list --all 2>/dev/null | grep -qF "$held_id"; }
is_listed=no; [ -n "$held_id" ] && listed && is_listed=yes
check "5. held lease ${held_id:-?} is listed by 'list --all' (root)" test "$is_listed" = yes
pid_before=$(prop builddird.service MainPID)
gexec systemctl restart builddird.service; rc=$?
wait_for 15 test "$(prop builddird.service SubState)" = running
check "5. systemctl restart builddird with a lease held: rc 0, active again, new MainPID" \
    test "$rc" = 0 -a "$(prop builddird.service SubState)" = running -a "$(prop builddird.service MainPID)" != "$pid_before"
check "5. after the restart the held lease's dir still exists" gexec test -d "${held_path:-/nonexistent}"
if [ -n "$held_id" ] && listed; then
    ok "5. after the restart the held lease is still listed"
else
    not_ok "5. after the restart the held lease is still listed"
fi
held_logged=$(lease_msgs "$held_id")
echo "#   records for the held lease: ${held_logged:-none}"
resumed=$(gexec journalctl -u builddird.service -o cat --no-pager 2>/dev/null | grep -c "connection resumed from the fd store")
check "5. the new daemon resumed the lease's connection from the fd store" test "${resumed:-0}" -ge 1
# The build finishes normally (its dir existed to the end: exit 0) and its
# release, sent to the new daemon, deletes the dir.
if wait_for 30 gone "$ctl_bg_pid"; then
    wait "$ctl_bg_pid"; held_rc=$?
    echo "#   held client exited rc=$held_rc; its output: $(tr '\n' ' ' < "$work/held.out")"
    check "5. the held build completed across the restart (rc 0)" test "$held_rc" = 0
else
    not_ok "5. the held build completed across the restart (rc 0)"
fi
check "5. its release after the restart deleted the dir" \
    wait_for 10 gexec test ! -e "${held_path:-/nonexistent}"
ctl_bg_pid=

# SIGTERM: STOPPING=1 and exit 0.
gexec systemctl stop builddird.service
stop_result="$(prop builddird.service Result) $(prop builddird.service ExecMainCode)/$(prop builddird.service ExecMainStatus)"
check "5. systemctl stop: the daemon exits 0 on SIGTERM [Result ExecMainCode/Status: $stop_result]" \
    test "$stop_result" = "success 1/0"
check "5. after the stop the socket is still listening (next connection restarts the daemon)" \
    test "$(prop builddird.socket ActiveState)" = active

# ------------------------------------------------------- 6. apt remove ---
# With the daemon running and its mount in place, removing the package stops
# both and leaves no mount behind.
guser "$guest_bin/builddir-ctl" status >/dev/null 2>&1
wait_for 10 test "$(prop builddird.service SubState)" = running
running_before=$(gexec pgrep -x builddird | tr '\n' ' ')
mounted_before=$(gexec findmnt -n -o TARGET --mountpoint "$guest_root" 2>/dev/null)
echo "#   before apt remove: builddird pid(s) ${running_before:-none}; mount ${mounted_before:-none}"
out=$(gexec apt-get remove -y -q builddird 2>&1); rc=$?
[ "$rc" = 0 ] || printf '%s\n' "$out" | tail -20 | diag
check "6. apt remove builddird succeeds with the daemon running and mounted [rc=$rc]" \
    test "$rc" = 0 -a -n "$running_before" -a -n "$mounted_before"
left=$(gexec pgrep -x builddird | tr '\n' ' ')
check "6. after apt remove no builddird process runs [${left:-none}]" test -z "$left"
mnt_left=$(gexec findmnt -n -o TARGET,OPTIONS --mountpoint "$guest_root" 2>/dev/null)
check "6. after apt remove nothing is mounted at $guest_root [${mnt_left:-none}]" test -z "$mnt_left"
check "6. after apt remove /run/builddird.sock is gone" gexec test ! -e /run/builddird.sock
sock_after=$(prop builddird.socket LoadState)
check "6. after apt remove builddird.socket is gone [LoadState=$sock_after]" test "$sock_after" = not-found
check "6. after apt remove builddir-ctl is gone" gexec test ! -e "$guest_bin/builddir-ctl"

# ------------------------------------------------------------ 7. teardown ---
log "powering off $machine"
gexec systemctl poweroff --no-block >/dev/null 2>&1
if wait_for 60 gone "$nspawn_pid"; then
    wait "$nspawn_pid"; nspawn_rc=$?
    check "7. container powered off cleanly (nspawn exit $nspawn_rc)" test "$nspawn_rc" = 0
else
    not_ok "7. container powered off within 60s"
    kill_container
fi
nspawn_pid=
leaked=$(grep -F " $work" /proc/self/mountinfo | awk '{print $5}' | tr '\n' ' ')
check "7. no mounts left below the container root on the host [${leaked:-none}]" test -z "$leaked"
stray=$(for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$container_pidns" ] && echo "${p#/proc/}"
    [ "$(readlink "$p/ns/mnt" 2>/dev/null)" = "$container_mntns" ] && echo "${p#/proc/}"
done | sort -u | tr '\n' ' ')
check "7. no process left in the container's namespaces [${stray:-none}]" test -z "$stray"
if command -v machinectl >/dev/null && [ -d /run/systemd/system ]; then
    registered=no; machinectl status "$machine" >/dev/null 2>&1 && registered=yes
    check "7. no machine '$machine' registered" test "$registered" = no
fi
[ -d "$propagate_dir" ] && rmdir "$propagate_dir" 2>/dev/null
check "7. nspawn's propagation dir for the machine is gone" test ! -e "$propagate_dir"

# ------------------------------------------- 8. without systemd as PID 1 ---
# The same root as a plain container (PID 1 is a shell, no systemd):
# install.sh installs the package and starts the daemon by hand; the user
# runs a build; apt remove stops the daemon and takes down its mount.
log "the package without systemd (systemd-nspawn, no --boot)"
cat > "$root/var/tmp/no-systemd.sh" <<'SCRIPT'
set -u
/var/tmp/install.sh --deb "$1" > /var/tmp/install.log 2>&1; echo "INSTALL_RC=$?"
echo "DAEMON_PID=$(cat /run/builddird.pid 2>/dev/null)"
echo "SOCK=$(stat -c %a /run/builddird.sock 2>&1)"
out=$(setpriv --reuid=builder --regid=builder --init-groups --reset-env -- \
    /usr/bin/builddir-ctl run -- sh -c 'cp /bin/true ./t && ./t && echo "EXEC_OK $PWD"' 2>&1)
echo "RUN_RC=$? $out"
# The README's Quickstart example, verbatim, as that user.
out=$(setpriv --reuid=builder --regid=builder --init-groups --reset-env -- sh -c \
    "builddir-ctl run -- sh -c 'printf \"#!/bin/sh\\necho hello from \\\$PWD\\n\" > hello && chmod +x hello && ./hello'" 2>&1)
echo "README_RC=$? $out"
echo "MOUNTED=$(findmnt -n -o OPTIONS --mountpoint /var/lib/builddird)"
apt-get remove -y -q builddird > /var/tmp/remove.log 2>&1; echo "REMOVE_RC=$?"
echo "LEFT=$(pgrep -x builddird | tr '\n' ' ')"
echo "MOUNT_LEFT=$(findmnt -n -o TARGET --mountpoint /var/lib/builddird)"
SCRIPT
# shellcheck disable=SC2054  # the commas are mount options
plain_args=(--quiet --directory="$root" --machine="$machine-plain" --private-network
    --register=no --as-pid2 --tmpfs=/tmp:mode=1777,nosuid,nodev,noexec --system-call-filter=quotactl_fd)
[ -d /run/systemd/system ] || plain_args+=(--keep-unit)
# (--console=pipe: no pseudo-terminal, so no \r in the output.)
out=$(timeout 120 systemd-nspawn "${plain_args[@]}" --console=pipe \
    /bin/bash /var/tmp/no-systemd.sh "$guest_deb" 2>&1 </dev/null | tr -d '\r')
printf '%s\n' "$out" | diag
nfield() { sed -n "s/^$1=//p" <<<"$out" | head -1; }
if [ "$(nfield INSTALL_RC)" != 0 ] && [ -f "$root/var/tmp/install.log" ]; then
    tail -20 "$root/var/tmp/install.log" | diag
fi
check "8. install.sh --deb without systemd exits 0 [$(nfield INSTALL_RC)]" test "$(nfield INSTALL_RC)" = 0
check "8. it started builddird by hand (pid $(nfield DAEMON_PID)) on a 666 socket [$(nfield SOCK)]" \
    test -n "$(nfield DAEMON_PID)" -a "$(nfield SOCK)" = 666
check "8. the user runs a build with builddir-ctl run; exec works in its dir" \
    grep -q '^RUN_RC=0 EXEC_OK /var/lib/builddird/b/' <<<"$out"
check "8. the README's Quickstart example works for that user (no Rust toolchain in the guest)" \
    grep -q '^README_RC=0 hello from /var/lib/builddird/b/[0-9a-f]*/build$' <<<"$out"
check "8. the daemon's mount is nosuid,nodev,exec [$(nfield MOUNTED)]" exec_mount_opts "$(nfield MOUNTED)"
check "8. apt remove succeeds [$(nfield REMOVE_RC)]" test "$(nfield REMOVE_RC)" = 0
check "8. after apt remove no builddird runs [$(nfield LEFT)]" test -z "$(nfield LEFT)"
check "8. after apt remove nothing is mounted at /var/lib/builddird [$(nfield MOUNT_LEFT)]" \
    test -z "$(nfield MOUNT_LEFT)"

log "done"
summary
