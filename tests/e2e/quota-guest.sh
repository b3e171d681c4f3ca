#!/bin/bash
# Project quotas for real (issue 8, acceptance 2): runs as root *inside* the
# VM that tests/e2e/quota-vm.sh boots with Debian's own kernel (which has
# CONFIG_QFMT_V2 and CONFIG_XFS_QUOTA, unlike the CI host's).
#
# Each filesystem is a loop image made here: ext4 `-O quota,project` mounted
# `prjquota`, the same without `prjquota`, and XFS mounted `prjquota`.
# Builds run as uid 1000 through `builddir-ctl run`, like an orchestrator.
#
# Output: TAP-style `ok N - ...` / `not ok N - ...`, then `N passed, M failed`.
# Exit status: 0 only if every check passed.

set -uo pipefail

ctl=/usr/local/bin/builddir-ctl
work=/var/tmp/quota-e2e
build_user=(setpriv --reuid=1000 --regid=1000 --clear-groups)
MIB=$((1 << 20))
limit=$((8 * MIB))
cap=$((64 * MIB))

# shellcheck source=tests/e2e/lib.sh
. "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
contains() { grep -qF -- "$2" <<<"$1"; }

rm -rf "$work" && mkdir -p "$work" && chmod 755 "$work"

# make_fs NAME KIND MOUNT_OPTS: a loop image mounted at $work/NAME/root.
make_fs() {
    local name=$1 kind=$2 opts=$3 dir=$work/$1
    mkdir -p "$dir/root"
    truncate -s 512M "$dir/img"
    case $kind in
        ext4-quota) mkfs.ext4 -q -F -O quota,project "$dir/img" ;;
        xfs) mkfs.xfs -q -f "$dir/img" ;;
    esac || return 1
    mount -o "loop,nosuid,nodev${opts:+,$opts}" "$dir/img" "$dir/root" || return 1
    mount --make-private "$dir/root" && chmod 755 "$dir/root"
}

# start NAME BACKEND [TOML]: builddird on $work/NAME/root (TOML: extra
# config lines); waits until it answers.
start() {
    local name=$1 backend=$2 extra=${3:-} dir=$work/$1
    cat >"$dir/config.toml" <<EOF
root = "$dir/root"
socket = "$dir/bd.sock"
backing = "external"
lease_backend = "$backend"
lease_size_default = $limit
lease_size_max = $cap
lease_inodes_default = 1000
lease_inodes_max = 100000
reclaim_grace_secs = 30
$extra
EOF
    builddird --config "$dir/config.toml" >>"$dir/daemon.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 100); do
        $ctl --socket "$dir/bd.sock" status >/dev/null 2>&1 && return 0
        kill -0 "$(cat "$dir/pid")" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
stop() { kill "$(cat "$work/$1/pid")" 2>/dev/null; wait "$(cat "$work/$1/pid")" 2>/dev/null; }
# as_build NAME ARGS...: builddir-ctl against NAME's daemon, as the build user.
as_build() { local s=$work/$1/bd.sock; shift; "${build_user[@]}" "$ctl" --socket "$s" "$@"; }
# our_limits ROOT: "id block-hard-KiB inode-hard" for every project in our
# range (1000000-1999999) with a limit, from `repquota -v` (which, unlike
# plain repquota, also lists projects that have limits but no usage).
our_limits() {
    repquota -P -n -v "$1" 2>/dev/null \
        | awk '$1 ~ /^#1[0-9][0-9][0-9][0-9][0-9][0-9]$/ && ($5 != 0 || $8 != 0) { print substr($1, 2), $5, $8 }'
}
used_kib() { df -k --output=used "$1" | tail -1 | tr -d ' '; }

# ---------------------------------------------------- the scenario, per fs ---
# runaway NAME FSTYPE: the acceptance checks on a prjquota-enforcing root.
runaway() {
    local name=$1 fstype=$2 dir=$work/$1 status out
    check "$fstype: daemon starts with lease_backend = project-quota" start "$name" project-quota
    status=$($ctl --socket "$dir/bd.sock" --json status)
    check "$fstype: status reports the mode" \
        contains "$status" "leases: project-quota (per-build size limits on $fstype: default $limit bytes / 1000 inodes, at most $cap / 100000"

    # The runaway fills its lease, then stays (full) until told to go; a
    # neighbour lease writes while it is full.
    rm -f /tmp/full /tmp/go /tmp/*.project
    local before
    before=$(used_kib "$dir/root")
    as_build "$name" run --name runaway -- sh -c \
        "lsattr -pd . > /tmp/runaway.project; dd if=/dev/zero of=big bs=1M count=64 2>&1; echo rc=\$?; sync; echo USED=\$(df -k --output=used $dir/root | tail -1); $ctl --socket $dir/bd.sock --json list --size; touch /tmp/full; while [ ! -e /tmp/go ]; do sleep 0.1; done" \
        >"$dir/runaway.out" 2>&1 &
    local runaway_pid=$!
    as_build "$name" run --name neighbour -- sh -c \
        "lsattr -pd . > /tmp/neighbour.project; while [ ! -e /tmp/full ]; do sleep 0.1; done; dd if=/dev/zero of=x bs=1M count=4 2>&1 && echo NEIGHBOUR-OK" \
        >"$dir/neighbour.out" 2>&1
    check "$fstype: a neighbour lease writes 4 MiB while the runaway's is full" \
        grep -q NEIGHBOUR-OK "$dir/neighbour.out"
    grep -q NEIGHBOUR-OK "$dir/neighbour.out" || diag <"$dir/neighbour.out"
    local p_run p_nb
    p_run=$(awk '{print $1}' /tmp/runaway.project 2>/dev/null)
    p_nb=$(awk '{print $1}' /tmp/neighbour.project 2>/dev/null)
    check "$fstype: the two leases are in different projects ($p_run, $p_nb)" \
        test -n "$p_run" -a -n "$p_nb" -a "$p_run" != "$p_nb"
    # The kernel's own view while the runaway is live: its project has the
    # 8 MiB (8192 KiB) hard limit.
    check "$fstype: the kernel holds the live lease's project at 8192 KiB" \
        grep -q "^$p_run 8192 1000\$" <<<"$(our_limits "$dir/root")"
    our_limits "$dir/root" | diag
    touch /tmp/go
    wait "$runaway_pid"
    out=$(cat "$dir/runaway.out")
    if { contains "$out" "Disk quota exceeded" || contains "$out" "No space left"; } && ! contains "$out" "rc=0"; then
        ok "$fstype: a build writing 64 MiB into an 8 MiB lease stops at its limit"
    else
        not_ok "$fstype: a build writing 64 MiB into an 8 MiB lease stops at its limit"
        echo "$out" | diag
    fi
    # Its own view while it ran: usage against the limit (the JSON is
    # pretty-printed; squeezed to one line, each lease is one flat object).
    local row size lim
    row=$(tr -d ' \n' <<<"$out" | grep -o '{[^{}]*"name":"runaway"[^{}]*}')
    size=$(grep -o '"size_bytes":[0-9]*' <<<"$row" | cut -d: -f2)
    lim=$(grep -o '"limit_bytes":[0-9]*' <<<"$row" | cut -d: -f2)
    if [ "${lim:-0}" = "$limit" ] && [ "${size:-0}" -le "$limit" ] && [ "${size:-0}" -ge $((limit - MIB)) ]; then
        ok "$fstype: list --size shows usage against the limit ($size of $lim bytes)"
    else
        not_ok "$fstype: list --size shows usage against the limit"
        echo "row: $row" | diag
        echo "$out" | diag
    fi
    local used grown
    used=$(grep -o 'USED= *[0-9]*' <<<"$out" | tr -dc 0-9)
    grown=$(( ${used:-0} - before ))
    echo "fs used before: $before KiB, with the lease full: ${used:-?} KiB" | diag
    check "$fstype: while the lease was full the filesystem had grown by about the limit (+${grown} KiB)" \
        test -n "$used" -a "$grown" -le $(( limit / 1024 + 1024 )) -a "$grown" -ge $(( limit / 1024 - 1024 ))
    check "$fstype: the daemon logged that the lease hit its limit" \
        grep -q "reached its size limit" "$dir/daemon.log"

    # shellcheck disable=SC2016 # expanded by the build's shell
    out=$(as_build "$name" run --inodes 100 -- sh -c \
        'i=0; while [ $i -lt 200 ]; do i=$((i+1)); : > f$i || exit 3; done; echo ALL-200' 2>&1)
    if { contains "$out" "Disk quota exceeded" || contains "$out" "No space left"; } && ! contains "$out" "ALL-200"; then
        ok "$fstype: an inode limit of 100 stops the build ($(head -1 <<<"$out"))"
    else
        not_ok "$fstype: an inode limit of 100 stops the build"
        echo "$out" | diag
    fi

    out=$(as_build "$name" run --size 128M -- true 2>&1)
    check "$fstype: a request above the cap is refused as quota-exceeded naming it" \
        contains "$out" "quota-exceeded: a size of 134217728 bytes is above lease_size_max = $cap"
    echo "$out" | diag

    wait_all_reaped "$name"
    check "$fstype: every lease was released and reaped" \
        test "$($ctl --socket "$dir/bd.sock" --json list --all)" = "[]"
    no_limits_left "$fstype" "$dir/root"
}

wait_all_reaped() {
    for _ in $(seq 100); do
        [ "$($ctl --socket "$work/$1/bd.sock" --json list --all)" = "[]" ] && return
        sleep 0.1
    done
}

# no_limits_left FSTYPE ROOT: the kernel keeps no limit for any project of
# ours. A control first: a limit without usage must be seen.
no_limits_left() {
    setquota -P 1999999 0 1000 0 0 "$2"
    check "$1: (control) a limit on an unused project is seen" \
        grep -q "^1999999 1000 0\$" <<<"$(our_limits "$2")"
    setquota -P 1999999 0 0 0 0 "$2"
    local left
    left=$(our_limits "$2")
    check "$1: no project of ours keeps a limit once its lease is gone" test -z "$left"
    [ -z "$left" ] || echo "$left" | diag
}

# restart_and_ids NAME: with only two project ids, a held lease keeps its
# id and limit across kill -9; the next lease gets the other id; a third is
# refused; a kept tree's project is cleared after a restart and removal.
restart_and_ids() {
    local name=$1 dir=$work/$1 out two='project_ids = "1000000-1000001"'
    stop "$name"
    check "ext4: daemon starts with project_ids = 1000000-1000001" start "$name" project-quota "$two"
    rm -f /tmp/go2 /tmp/held.project
    as_build "$name" run --name held -- sh -c \
        "lsattr -pd . > /tmp/held.project; while [ ! -e /tmp/go2 ]; do sleep 0.1; done; dd if=/dev/zero of=big bs=1M count=64 2>&1; echo rc=\$?" \
        >"$dir/held.out" 2>&1 &
    local held=$!
    for _ in $(seq 50); do [ -s /tmp/held.project ] && break; sleep 0.1; done
    kill -9 "$(cat "$dir/pid")"; wait "$(cat "$dir/pid")" 2>/dev/null
    check "ext4: the daemon restarts with a lease held" start "$name" project-quota "$two"
    local p_held p_new
    p_held=$(awk '{print $1}' /tmp/held.project)
    rm -f /tmp/go3 /tmp/new.project
    as_build "$name" run --name second -- sh -c \
        "lsattr -pd . > /tmp/new.project; while [ ! -e /tmp/go3 ]; do sleep 0.1; done" >/dev/null 2>&1 &
    local second=$!
    for _ in $(seq 50); do [ -s /tmp/new.project ] && break; sleep 0.1; done
    p_new=$(awk '{print $1}' /tmp/new.project 2>/dev/null)
    check "ext4: after the restart a new lease gets the other id ($p_new; held: $p_held)" \
        test "$p_held" = 1000000 -a "$p_new" = 1000001
    out=$(as_build "$name" run -- true 2>&1)
    check "ext4: with both ids held, a third lease is refused, naming project_ids" \
        contains "$out" "quota-exceeded: no free project id"
    echo "$out" | diag
    touch /tmp/go2 /tmp/go3
    wait "$held" "$second"
    out=$(cat "$dir/held.out")
    if contains "$out" "Disk quota exceeded" && ! contains "$out" "rc=0"; then
        ok "ext4: the held lease is still limited after the restart"
    else
        not_ok "ext4: the held lease is still limited after the restart"
        echo "$out" | diag
    fi
    # A kept tree across a restart: its project is cleared when it is removed.
    out=$(as_build "$name" run --keep-failed -- sh -c 'echo x > f; exit 1' 2>&1)
    local kept
    kept=$($ctl --socket "$dir/bd.sock" --json list --all | tr -d ' \n' | grep -o '"id":"[0-9a-f]*","name":"[^"]*","state":"kept"' | cut -d'"' -f4)
    kill -9 "$(cat "$dir/pid")"; wait "$(cat "$dir/pid")" 2>/dev/null
    start "$name" project-quota "$two"
    check "ext4: a kept tree is removed after a restart" \
        "$ctl" --socket "$dir/bd.sock" remove "$kept"
    wait_all_reaped "$name"
    no_limits_left ext4 "$dir/root"
}

# concurrent_ids NAME: 12 builds at once over 3 project ids: at most 3 get
# a lease, each its own id; the rest are refused, none shares.
concurrent_ids() {
    local name=$1 dir=$work/$1 i
    stop "$name"
    start "$name" project-quota 'project_ids = "1000000-1000002"'
    rm -rf /tmp/conc && mkdir -m 1777 /tmp/conc
    local pids=()
    for i in $(seq 12); do
        as_build "$name" run -- sh -c "set -- \$(lsattr -pd .); echo \$1 > /tmp/conc/$i; sleep 2" \
            >"/tmp/conc/out.$i" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" # (not a bare wait: the daemon is a child too)
    local got ids refused
    got=$(cat /tmp/conc/[0-9]* 2>/dev/null | grep -c .)
    ids=$(cat /tmp/conc/[0-9]* 2>/dev/null | sort -u | grep -c .)
    refused=$(grep -l "quota-exceeded: no free project id" /tmp/conc/out.* 2>/dev/null | wc -l)
    check "ext4: 12 concurrent builds over 3 ids: $got leased with $ids distinct ids, $refused refused" \
        test "$got" -le 3 -a "$got" -ge 1 -a "$got" = "$ids" -a $((got + refused)) = 12
    wait_all_reaped "$name"
}

# ------------------------------------------------------------------ ext4 ---
if make_fs ext4 ext4-quota prjquota; then
    ok "ext4 -O quota,project mounted prjquota"
    runaway ext4 ext4
    # A build inside a user namespace (the Nix sandbox) cannot leave its
    # project; the owner in the host namespace can (docs/security.md).
    # shellcheck disable=SC2016 # expanded by the build's shell
    out=$(as_build ext4 run -- sh -c \
        'touch f g; set -- $(lsattr -pd .); echo "$1" > /tmp/lease.project;
         unshare --user --map-root-user true && echo USERNS-OK;
         unshare --user --map-root-user chattr -p 0 f 2>&1;
         set -- $(lsattr -p f); echo "$1" > /tmp/f.project;
         chattr -p 0 g && set -- $(lsattr -p g) && echo "$1" > /tmp/g.project' 2>&1)
    echo "$out" | diag
    check "ext4: a build in a user namespace cannot move its file out of the project" \
        test "$(cat /tmp/f.project)" = "$(cat /tmp/lease.project)" -a -n "$(cat /tmp/lease.project)" \
        -a "$(grep -c USERNS-OK <<<"$out")" = 1
    check "ext4: (documented limitation) outside a user namespace the owner can" \
        test "$(cat /tmp/g.project 2>/dev/null)" = 0
    restart_and_ids ext4
    concurrent_ids ext4
    stop ext4
else
    not_ok "ext4 -O quota,project mounted prjquota"
fi

# ext4 with quotas accounted but not enforced: project-quota refuses to start.
if make_fs ext4-noenf ext4-quota "" ; then
    if start ext4-noenf project-quota; then
        not_ok "ext4 without prjquota: project-quota must refuse to start"
        stop ext4-noenf
    else
        out=$(tail -1 "$work/ext4-noenf/daemon.log")
        check "ext4 without prjquota: refused in one line naming the fix" \
            contains "$out" "mount it with -o prjquota"
        echo "$out" | diag
    fi
    # With lease_backend = "dir" it starts and says so.
    start ext4-noenf dir
    out=$($ctl --socket "$work/ext4-noenf/bd.sock" --json status)
    check "ext4 without prjquota, dir backend: status says there are no limits, in one clause" \
        contains "$out" "leases: dir (no per-build size limit)"
    out=$(builddird --config "$work/ext4-noenf/config.toml" --check 2>&1)
    check "ext4 without prjquota, dir backend: --check names why project quotas are unavailable" \
        contains "$out" "accounts project quotas but does not enforce them"
    out=$(as_build ext4-noenf run --size 8M -- true 2>&1)
    check "ext4 without prjquota, dir backend: a size request is refused, not ignored" \
        contains "$out" "lease_backend = \"dir\""
    stop ext4-noenf
else
    not_ok "ext4 -O quota,project mounted without prjquota"
fi

# ------------------------------------------------------------------- XFS ---
if make_fs xfs xfs prjquota; then
    ok "XFS mounted prjquota"
    runaway xfs xfs
    stop xfs
else
    not_ok "XFS mounted prjquota"
fi

for d in "$work"/*/root; do umount -l "$d" 2>/dev/null; done
summary
