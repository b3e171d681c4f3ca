#!/usr/bin/env bash
# End-to-end: a real multi-user nix-daemon takes its build directories from
# builddird, on a host whose /tmp is mounted noexec.
#
# The daemon is Debian bookworm's Nix 2.8.0 (the `nix` source package, with
# Debian's patches) plus contrib/nix/build-dir-helper.patch, linked against
# libbuilddir. It is built once and cached, keyed by the hashes of the source
# package's .dsc, the patch and builddir.h's declarations; a cache hit skips the build (a cold
# build took 12 minutes on two cores).
#
# The tests run in a private mount and PID namespace: /tmp is a
# noexec,nosuid,nodev tmpfs, /nix a tmpfs holding the store, the daemon's state
# and builddird's root; a `nixbld` group with eight build users and an
# unprivileged submitting user exist only in private copies of /etc/passwd and
# /etc/group bind-mounted there. Builds are submitted by that user through the
# daemon socket. Leaving the namespace ends every process started in it.
#
# What it changes on the host (nothing else):
#   - apt: a deb-src line for bookworm (/etc/apt/sources.list.d/bookworm-src.list)
#     if `apt-get source nix` finds no source; on a cache miss nix's
#     build-dependencies; busybox-static (the sandbox's /bin/sh), jq.
#   - /var/cache/builddird-e2e/nix/: the source, the build tree, the installed
#     patched Nix, the installed libbuilddir, logs of the last run.
#   - an empty directory /nix (the mount point of the private /nix) if missing;
#     removed again at the end if this script created it.
#
# Usage (as root):   cargo build --release --bins && tests/e2e/nix-daemon.sh
# Environment:
#   BUILDDIR_BIN_DIR        where builddird and builddir-ctl are
#                           (default: <repo>/target/release)
#   BUILDDIR_CAPI_SRC       checkout whose crates/capi is built and installed as
#                           libbuilddir (default: this repository)
#   BUILDDIR_E2E_CACHE      cache directory (default: /var/cache/builddird-e2e)
#   BUILDDIR_E2E_ALLOW_SKIP=1 exit 0 (not 1) when the test cannot run here
#
# Output: `ok N - ...` / `not ok N - ...` lines, then `N passed, M failed`.
# Exit status: 0 only if every check passed.

set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
bin_dir=${BUILDDIR_BIN_DIR:-$repo/target/release}
capi_src=${BUILDDIR_CAPI_SRC:-$repo}
cache=${BUILDDIR_E2E_CACHE:-/var/cache/builddird-e2e}/nix
patch_file=$repo/contrib/nix/build-dir-helper.patch

# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

if [ "${BUILDDIR_NIX_E2E_INNER:-}" != 1 ]; then
    # ======================================================== outer: build ===
    [ "$(id -u)" = 0 ] || skip "must run as root (apt, mounts, namespaces, build users)"
    for b in builddird builddir-ctl; do
        if [ ! -x "$bin_dir/$b" ]; then
            echo "error: $bin_dir/$b missing: run 'cargo build --release --bins' first (or set BUILDDIR_BIN_DIR)" >&2
            echo "0 passed, 1 failed"
            exit 1
        fi
    done
    [ -f "$capi_src/crates/capi/include/builddir.h" ] ||
        skip "$capi_src/crates/capi/include/builddir.h missing: the C library is needed (set BUILDDIR_CAPI_SRC)"
    mkdir -p "$cache/logs"
    exec 9>"$cache/lock"
    flock -w 1800 9 || { echo "error: could not lock $cache/lock within 1800s" >&2; exit 1; }

    export DEBIAN_FRONTEND=noninteractive
    apt_updated=0
    apt_install() {
        [ "$apt_updated" = 1 ] || { apt-get update -qq && apt_updated=1; }
        apt-get install -y -qq "$@" > "$cache/logs/apt.log" 2>&1 ||
            { tail -5 "$cache/logs/apt.log" | diag; skip "apt-get install $* failed (see $cache/logs/apt.log)"; }
    }
    need=()
    [ -x /bin/busybox ] || need+=(busybox-static)
    command -v jq >/dev/null || need+=(jq)
    command -v dpkg-source >/dev/null || need+=(dpkg-dev)
    command -v cargo >/dev/null || skip "cargo not found (needed to build libbuilddir)"
    [ ${#need[@]} = 0 ] || apt_install "${need[@]}"

    # --- libbuilddir, rebuilt from the checkout every run (cargo makes that
    # cheap when nothing changed); the cached Nix finds it through its rpath.
    capi_prefix=$cache/capi
    log "building and installing libbuilddir from $capi_src into $capi_prefix"
    if ! "$capi_src/crates/capi/install.sh" "$capi_prefix" > "$cache/logs/capi-install.log" 2>&1; then
        tail -20 "$cache/logs/capi-install.log" | diag
        echo "error: building libbuilddir failed (logs in $cache/logs)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    export PKG_CONFIG_PATH=$capi_prefix/lib/pkgconfig

    # --- the source package
    src=$cache/src
    first_dsc() { local d; for d in "$src"/nix_*.dsc; do [ -e "$d" ] && echo "$d" && return; done; }
    dsc=$(first_dsc)
    if [ -z "$dsc" ]; then
        log "apt-get source --download-only nix"
        mkdir -p "$src"
        if ! (cd "$src" && apt-get source -qq --download-only nix) > "$cache/logs/source.log" 2>&1; then
            if ! grep -rqs '^deb-src .*bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/; then
                log "no deb-src for bookworm: adding /etc/apt/sources.list.d/bookworm-src.list"
                echo 'deb-src http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list.d/bookworm-src.list
            fi
            apt-get update -qq && apt_updated=1
            (cd "$src" && apt-get source -qq --download-only nix) > "$cache/logs/source.log" 2>&1 ||
                { tail -5 "$cache/logs/source.log" | diag; skip "apt-get source nix failed (see $cache/logs/source.log)"; }
        fi
        dsc=$(first_dsc)
        [ -n "$dsc" ] || skip "apt-get source nix left no .dsc in $src"
    fi

    # --- the patched Nix, cached
    inst=$cache/install
    # The header counts by its declarations, not its comments (the library
    # is linked dynamically and installed afresh on every run).
    header_decls=$(gcc -x c -fpreprocessed -dD -E -P \
        "$capi_src/crates/capi/include/builddir.h") \
        || skip "cannot read the declarations of builddir.h (gcc)"
    key=$({ cat "$dsc" "$patch_file"; printf '%s\n' "$header_decls"; } | sha256sum | cut -c1-16)
    key="$key-v2"
    if [ "$(cat "$inst/.key" 2>/dev/null)" = "$key" ] && [ -x "$inst/bin/nix-daemon" ]; then
        log "patched Nix: cache hit ($key)"
    else
        log "patched Nix: cache miss ($key), building (about 12 minutes on two cores)"
        build_start=$SECONDS
        if ! grep -rqs '^deb-src .*bookworm' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo 'deb-src http://deb.debian.org/debian bookworm main' > /etc/apt/sources.list.d/bookworm-src.list
            apt_updated=0
        fi
        [ "$apt_updated" = 1 ] || { apt-get update -qq && apt_updated=1; }
        apt-get build-dep -y -qq nix > "$cache/logs/build-dep.log" 2>&1 ||
            { tail -5 "$cache/logs/build-dep.log" | diag; skip "apt-get build-dep nix failed (see $cache/logs/build-dep.log)"; }
        build=$cache/build
        rm -rf --one-file-system "$build" "$inst"
        mkdir -p "$build"
        multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
        # dpkg-source applies debian/patches/series; the two variables are
        # the ones debian/rules exports.
        if ! (
            set -e
            dpkg-source -x "$dsc" "$build/nix"
            cd "$build/nix"
            patch -p1 < "$patch_file"
            export EDITLINE_CFLAGS=-DREADLINE
            export EDITLINE_LIBS="/usr/lib/$multiarch/libhistory.so /usr/lib/$multiarch/libreadline.so"
            autoreconf -fi
            ./configure --prefix="$inst" --libdir="$inst/lib" --localstatedir=/nix/var \
                --enable-gc --disable-doc-gen LDFLAGS="-Wl,-rpath,$capi_prefix/lib"
            grep -q '^#define HAVE_BUILDDIR 1' config.h || { echo "configure did not find libbuilddir"; exit 1; }
            # `install` builds what is installed (not Nix's unit tests);
            # OPTIMIZE=0 and precompiled headers (both switches of Nix's own
            # makefiles) shorten the cold build and change no behaviour.
            make -j"$(nproc)" OPTIMIZE=0 PRECOMPILE_HEADERS=1 install
        ) > "$cache/logs/nix-build.log" 2>&1; then
            tail -30 "$cache/logs/nix-build.log" | diag
            rm -rf --one-file-system "$inst"
            echo "error: building the patched Nix failed (log: $cache/logs/nix-build.log)" >&2
            echo "0 passed, 1 failed"
            exit 1
        fi
        echo "$key" > "$inst/.key"
        log "patched Nix built in $((SECONDS - build_start))s"
    fi
    # (ldd's output is captured first: `grep -q` stopping early would make
    # ldd die of SIGPIPE, which pipefail reports as a failure.)
    libs=$(ldd "$inst/bin/nix" "$inst/lib/libnixstore.so" 2>&1)
    if grep -q 'not found' <<<"$libs"; then
        grep 'not found' <<<"$libs" | diag
        skip "the cached Nix misses shared libraries: run 'apt-get build-dep nix' (or delete $inst)"
    fi
    grep -q 'libbuilddir\.so' <<<"$libs" ||
        { echo "error: $inst/lib/libnixstore.so is not linked against libbuilddir" >&2; echo "0 passed, 1 failed"; exit 1; }

    made_nix=0
    if [ ! -e /nix ]; then mkdir /nix && made_nix=1; fi
    log "entering a private mount and PID namespace"
    # The host's Rust toolchain, for the Cargo build-script check (optional).
    rust_sysroot=$(rustc --print sysroot 2>/dev/null) || rust_sysroot=
    BUILDDIR_NIX_E2E_INNER=1 NIX_E2E_INST=$inst NIX_E2E_BIN=$bin_dir NIX_E2E_LOGS=$cache/logs \
        NIX_E2E_RUST=$rust_sysroot \
        unshare --mount --propagation private --pid --fork --mount-proc "$0"
    status=$?
    [ "$made_nix" = 1 ] && rmdir /nix
    exit "$status"
fi

# ========================================================== inner: tests ===
inst=${NIX_E2E_INST:?}
bin=${NIX_E2E_BIN:?}
logs=${NIX_E2E_LOGS:?}
ctl() { "$bin/builddir-ctl" --socket "$bd_sock" "$@"; }

mount -t tmpfs -o mode=1777,noexec,nosuid,nodev tmpfs /tmp || skip "cannot mount a tmpfs on /tmp"
mount -t tmpfs -o mode=0755 tmpfs /nix || skip "cannot mount a tmpfs on /nix"
grep -qw noexec <<<"$(findmnt -no OPTIONS /tmp)" || skip "/tmp is not noexec in the namespace"

scratch=/nix/e2e
mkdir -p "$scratch/gate" /nix/var/nix
chmod 0755 "$scratch"
chmod 0777 "$scratch/gate"

# --- users: nixbld1..8 in group nixbld, and the submitter, in private copies.
nixbld_gid=30000 submitter_uid=30100 user=nixe2e
grep -Ev '^(nixbld[0-9]*|nixe2e):' /etc/passwd > "$scratch/passwd"
grep -Ev '^(nixbld|nixe2e):' /etc/group > "$scratch/group"
for id in $nixbld_gid $(seq 30001 30008) $submitter_uid; do
    if grep -qx "$id" <<<"$(cut -d: -f3 "$scratch/passwd" "$scratch/group")"; then
        skip "id $id is taken on this host (the test's nixbld users use 30000-30008 and 30100)"
    fi
done
members=""
for i in $(seq 1 8); do
    echo "nixbld$i:x:$((30000 + i)):$nixbld_gid:Nix build user $i:/var/empty:/usr/sbin/nologin" >> "$scratch/passwd"
    members="$members${members:+,}nixbld$i"
done
echo "nixbld:x:$nixbld_gid:$members" >> "$scratch/group"
echo "$user:x:$submitter_uid:$submitter_uid:builddird e2e submitter:$scratch/home:/bin/sh" >> "$scratch/passwd"
echo "$user:x:$submitter_uid:" >> "$scratch/group"
chmod 0644 "$scratch/passwd" "$scratch/group"
if ! mount --bind "$scratch/passwd" /etc/passwd || ! mount --bind "$scratch/group" /etc/group; then
    skip "cannot bind-mount private /etc/passwd and /etc/group"
fi
[ "$(getent group nixbld | cut -d: -f4)" = "$members" ] ||
    skip "the private /etc/group is not what getent sees (nscd or sssd caching?)"
mkdir -p "$scratch/home"
chown "$submitter_uid:$submitter_uid" "$scratch/home"

# --- builddird
bd_root=/nix/var/nix/builddird
bd_sock=/nix/var/nix/builddird.sock
mkdir -p "$bd_root"
: > "$scratch/builddird.toml"
bd_pid=
start_builddird() {
    "$bin/builddird" --config "$scratch/builddird.toml" --root "$bd_root" --socket "$bd_sock" \
        >> "$logs/builddird.log" 2>&1 &
    bd_pid=$!
    for _ in $(seq 1 100); do
        ctl status >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    tail -5 "$logs/builddird.log" | diag
    return 1
}
: > "$logs/builddird.log"
start_builddird || skip "builddird did not start (log: $logs/builddird.log)"

# --- the derivations. Each writes a script into its build dir and runs it
# (what fails on a noexec mount), optionally waits for $gate/go-TAG first,
# and optionally fails.
cat > "$scratch/drv.nix" <<'EOF'
{ tag, gate ? "", fail ? false }:
derivation {
  name = "builddir-e2e-${tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  # The host's tools without the sandbox; busybox's applets inside it.
  PATH = "/usr/bin:/bin";
  args = [ "-c" ''
    echo "build dir: $PWD"
    printf '#!/bin/sh\necho script ran\n' > ./script
    chmod 755 ./script || exit 1
    echo "chmod 755 ./script: done"
    ran=$(./script) || exit 1
    echo "$ran" > ./ran.txt
    if [ -n "${gate}" ]; then
      while [ ! -e "${gate}/go-${tag}" ]; do sleep 0.1; done
    fi
    ${if fail then "echo failing on purpose; exit 1" else ""}
    echo "$ran" > "$out"
  '' ];
}
EOF
chmod 0644 "$scratch/drv.nix"

# The seed case: a Cargo crate with a build script (Cargo runs the compiled
# build script from the target dir, in the build dir). The toolchain is the
# host's, bind-mounted where build users can read it (sandbox off only).
rust=
if [ -n "${NIX_E2E_RUST:-}" ] && [ -x "$NIX_E2E_RUST/bin/cargo" ] && command -v cc >/dev/null; then
    rust=$scratch/rust
    mkdir -p "$rust"
    if ! mount --bind "$NIX_E2E_RUST" "$rust" || ! mount -o remount,bind,ro "$rust"; then rust=; fi
fi
cat > "$scratch/cargo.nix" <<'EOF'
{ tag, rust }:
derivation {
  name = "builddir-e2e-${tag}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "${rust}/bin:/usr/bin:/bin";
  args = [ "-c" ''
    set -e
    export HOME="$PWD" CARGO_HOME="$PWD/.cargo"
    mkdir -p hello/src
    cd hello
    printf '[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n' > Cargo.toml
    printf 'fn main() { println!("cargo:rustc-env=FROM_BUILD_SCRIPT=yes"); }\n' > build.rs
    printf 'fn main() { println!("build script ran: {}", env!("FROM_BUILD_SCRIPT")); }\n' > src/main.rs
    cargo build --offline
    ./target/debug/hello > "$out"
  '' ];
}
EOF
chmod 0644 "$scratch/cargo.nix"
# cargo_build TAG: nix-build of the crate as the submitting user
cargo_build() {
    timeout 600 setpriv --reuid="$submitter_uid" --regid="$submitter_uid" --clear-groups \
        env -i PATH="$inst/bin:/usr/bin:/bin" HOME="$scratch/home" NIX_REMOTE=daemon \
        NIX_CONF_DIR="$scratch/client-conf" \
        nix-build "$scratch/cargo.nix" --argstr tag "$1" --argstr rust "$rust" --no-out-link \
        > "$scratch/out-$1" 2>&1
}

# --- the nix-daemon, restarted with each configuration
nd_pid=
start_daemon() { # NAME HELPER SANDBOX [DAEMON]
    local conf=$scratch/conf-$1 daemon=${4:-$inst/bin/nix-daemon}
    mkdir -p "$conf"
    {
        echo "build-users-group = nixbld"
        echo "max-jobs = 8"
        echo "substituters ="
        echo "sandbox = $3"
        echo "sandbox-paths = /bin/sh=/bin/busybox /gate=$scratch/gate"
        [ -z "$2" ] || echo "build-dir-helper = $2"
    } > "$conf/nix.conf"
    NIX_CONF_DIR=$conf "$daemon" >> "$logs/nix-daemon-$1.log" 2>&1 &
    nd_pid=$!
    for _ in $(seq 1 100); do
        [ -S /nix/var/nix/daemon-socket/socket ] && return 0
        sleep 0.2
    done
    return 1
}
stop_daemon() {
    [ -n "$nd_pid" ] || return 0
    kill "$nd_pid" 2>/dev/null
    wait "$nd_pid" 2>/dev/null
    rm -f /nix/var/nix/daemon-socket/socket
    nd_pid=
}

mkdir -p "$scratch/client-conf"
: > "$scratch/client-conf/nix.conf"
# nix-build as the submitting user: TAG [extra args...]; output in $scratch/out-TAG
submit() {
    local tag=$1; shift
    timeout 300 setpriv --reuid="$submitter_uid" --regid="$submitter_uid" --clear-groups \
        env -i PATH="$inst/bin:/usr/bin:/bin" HOME="$scratch/home" NIX_REMOTE=daemon \
        NIX_CONF_DIR="$scratch/client-conf" \
        nix-build "$scratch/drv.nix" --argstr tag "$tag" "$@" > "$scratch/out-$tag" 2>&1
}
gate_of() { if [ "$1" = true ]; then echo /gate; else echo "$scratch/gate"; fi; }

# wait_lease TAG: prints the live lease of TAG's build as JSON, waits up to 60s
# (Nix names it after the derivation: nix-build-builddir-e2e-TAG.drv)
wait_lease() {
    local l
    for _ in $(seq 1 300); do
        l=$(ctl --json list --all 2>/dev/null |
            jq -c --arg n "nix-build-builddir-e2e-$1.drv" '[.[] | select(.name == $n and .state == "live")] | first // empty')
        [ -n "$l" ] && { echo "$l"; return 0; }
        sleep 0.2
    done
    return 1
}
# gone_lease ID: true once no live lease has this id and its path is gone (30s)
gone_lease() { # ID PATH
    for _ in $(seq 1 150); do
        if ! ctl --json list --all | jq -e --arg id "$1" '.[] | select(.id == $id and .state == "live")' >/dev/null &&
           [ ! -e "$2" ]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}
is_nixbld_uid() { [ "$1" -ge 30001 ] && [ "$1" -le 30008 ]; }

# ------------------------------------------------- unpatched / helper off
# expect_noexec_failure NAME DESCRIPTION
expect_noexec_failure() {
    if submit "$1" --no-out-link; then
        not_ok "$2: a build that runs a script from its build dir in noexec /tmp fails (it succeeded)"
        diag < "$scratch/out-$1"
    elif grep -q 'build dir: /tmp/nix-build-' "$scratch/out-$1" && grep -q 'chmod 755 ./script: done' "$scratch/out-$1" &&
         grep -q 'script: Permission denied' "$scratch/out-$1"; then
        ok "$2: a build that runs a script from its build dir in noexec /tmp fails (Permission denied)"
    else
        not_ok "$2: the build failed, but not because /tmp is noexec"
        diag < "$scratch/out-$1"
    fi
}
if [ -x /usr/bin/nix-daemon ] && dpkg -s nix-bin >/dev/null 2>&1; then
    log "Debian's unpatched nix-daemon ($(dpkg-query -W -f '${Version}' nix-bin)), sandbox off"
    start_daemon debian "" false /usr/bin/nix-daemon || skip "Debian's nix-daemon did not start (log: $logs/nix-daemon-debian.log)"
    expect_noexec_failure debian "unpatched (Debian's nix-daemon)"
    stop_daemon
else
    log "Debian's nix-bin is not installed: the unpatched case is the patched daemon with the helper unset"
fi
log "patched nix-daemon with build-dir-helper unset (Nix's own behaviour), sandbox off"
start_daemon off "" false || skip "nix-daemon did not start (log: $logs/nix-daemon-off.log)"
expect_noexec_failure off "helper unset"
if [ -n "$rust" ]; then
    if cargo_build cargo-off; then
        not_ok "helper unset: a Cargo crate with a build script fails in noexec /tmp (it built)"
    elif grep -q 'build-script-build' "$scratch/out-cargo-off" && grep -q 'os error 13' "$scratch/out-cargo-off"; then
        ok "helper unset: a Cargo crate with a build script fails in noexec /tmp (build-script-build: os error 13)"
    else
        not_ok "helper unset: the Cargo build failed, but not on its build script"
        tail -20 "$scratch/out-cargo-off" | diag
    fi
fi
stop_daemon

# ------------------------------------------------------ helper on, sandbox off
for sandbox in false true; do
    log "nix-daemon with build-dir-helper = $bd_sock, sandbox = $sandbox"
    start_daemon "on-$sandbox" "$bd_sock" "$sandbox" || skip "nix-daemon did not start (log: $logs/nix-daemon-on-$sandbox.log)"
    tag=s-$sandbox
    submit "$tag" --no-out-link --argstr gate "$(gate_of $sandbox)" &
    job=$!
    if lease=$(wait_lease "$tag"); then
        path=$(jq -r .path <<<"$lease")
        owner=$(jq -r .owner_uid <<<"$lease")
        mode=$(stat -c '%a %u' "$path" 2>/dev/null)
        opts=$(findmnt -no OPTIONS -T "$path")
        if is_nixbld_uid "$owner" && [ "$mode" = "700 $owner" ] && [ "$(findmnt -no TARGET -T "$path")" = "$bd_root" ] &&
           ! grep -qw noexec <<<"$opts" && grep -qw nosuid <<<"$opts" && grep -qw nodev <<<"$opts"; then
            ok "sandbox=$sandbox: during the build, builddir-ctl list --all shows the lease owned by nixbld uid $owner, mode 0700, on the exec mount ($opts)"
        else
            not_ok "sandbox=$sandbox: lease during the build: owner $owner, mode/uid '$mode', mount options $opts"
            echo "$lease" | diag
        fi
    else
        not_ok "sandbox=$sandbox: no live lease appeared during the build"
        lease=
    fi
    touch "$scratch/gate/go-$tag"
    if wait "$job" && [ "$(cat "$(tail -1 "$scratch/out-$tag")" 2>/dev/null)" = "script ran" ]; then
        ok "sandbox=$sandbox: the patched daemon builds it (script ran from the builddird build dir)"
    else
        not_ok "sandbox=$sandbox: the patched daemon failed the build"
        diag < "$scratch/out-$tag"
    fi
    if [ -z "$lease" ]; then
        not_ok "sandbox=$sandbox: after the build the lease is released and the directory is gone (there was no lease)"
    elif gone_lease "$(jq -r .id <<<"$lease")" "$path"; then
        ok "sandbox=$sandbox: after the build the lease is released and the directory is gone"
    else
        not_ok "sandbox=$sandbox: $path or its lease still exists after the build"
    fi
    [ "$sandbox" = true ] && break

    # --- the seed case through the daemon
    if [ -z "$rust" ]; then
        log "no host Rust toolchain (rustc --print sysroot): the Cargo checks are not run"
    elif cargo_build cargo-on && [ "$(cat "$(tail -1 "$scratch/out-cargo-on")")" = "build script ran: yes" ]; then
        ok "sandbox=false: a Cargo crate with a build script builds in its builddird build dir"
    else
        not_ok "sandbox=false: the Cargo crate with a build script failed"
        tail -20 "$scratch/out-cargo-on" | diag
    fi

    # --- keep-failed: the tree is handed to the user who asked for the build
    if submit keep --no-out-link --arg fail true -K; then
        not_ok "nix-build -K of a failing derivation: it did not fail"
    else
        kept=$(sed -n "s/^note: keeping build directory '\(.*\)'$/\1/p" "$scratch/out-keep" | tail -1)
        entry=$(ctl --json list --all | jq -c --arg p "$kept" '.[] | select(.path == $p and .state == "kept")')
        as_submitter() { setpriv --reuid="$submitter_uid" --regid="$submitter_uid" --clear-groups "$@"; }
        # A copy the submitter can run (the checkout may be in a 0700 home).
        install -m 0755 "$bin/builddir-ctl" "$scratch/builddir-ctl"
        mine=$(as_submitter "$scratch/builddir-ctl" --socket "$bd_sock" --json list 2>/dev/null |
            jq -c --arg p "$kept" '.[] | select(.path == $p and .state == "kept")' 2>/dev/null)
        owners=$(stat -c %u:%g "$kept" "$kept/ran.txt" "$kept/script" 2>/dev/null | sort -u)
        if [ -n "$kept" ] && [ -n "$entry" ] && [ -n "$mine" ] &&
           [ "$owners" = "$submitter_uid:$submitter_uid" ] &&
           [ "$(jq -r .owner_uid <<<"$entry")" = "$submitter_uid" ] &&
           [ "$(as_submitter cat "$kept/ran.txt" 2>/dev/null)" = "script ran" ] &&
           ! setpriv --reuid=30001 --regid="$nixbld_gid" --clear-groups cat "$kept/ran.txt" >/dev/null 2>&1; then
            ok "nix-build -K of a failing derivation: the tree is kept at $kept, listed as kept, handed to the user who ran nix-build (uid $submitter_uid, in their own builddir-ctl list, readable by them and not by the build user)"
        else
            not_ok "nix-build -K: kept path '$kept', listing '$entry', the submitter's listing '$mine', owners '$owners' (want $submitter_uid:$submitter_uid)"
            diag < "$scratch/out-keep"
            stat -c '%A %U:%G %n' "$kept" "$kept"/* 2>&1 | diag
        fi
    fi

    # --- kill -9 of the daemon's worker mid-build
    submit kill --no-out-link --argstr gate "$scratch/gate" &
    job=$!
    if lease=$(wait_lease kill); then
        worker=$(jq -r .client_pid <<<"$lease")
        path=$(jq -r .path <<<"$lease")
        comm=$(cat "/proc/$worker/comm" 2>/dev/null)
        kill -9 "$worker"
        if gone_lease "$(jq -r .id <<<"$lease")" "$path"; then
            ok "kill -9 of the daemon's worker ($comm, pid $worker) mid-build releases the lease and the directory"
        else
            not_ok "kill -9 of the daemon's worker: lease $(jq -r .id <<<"$lease") still live or $path still there"
        fi
    else
        not_ok "kill -9 of the worker: no live lease appeared"
    fi
    touch "$scratch/gate/go-kill"
    wait "$job"

    # --- 8 concurrent builds
    jobs_=()
    for i in $(seq 1 8); do
        submit "c$i" --no-out-link --argstr gate "$scratch/gate" &
        jobs_+=($!)
    done
    leases=()
    for i in $(seq 1 8); do leases+=("$(wait_lease "c$i")"); done
    ids=$(printf '%s\n' "${leases[@]}" | jq -r '.id // empty' | sort -u | wc -l)
    paths=$(printf '%s\n' "${leases[@]}" | jq -r '.path // empty' | sort -u | wc -l)
    uids=$(printf '%s\n' "${leases[@]}" | jq -r '.owner_uid // empty' | sort -u | wc -l)
    for i in $(seq 1 8); do touch "$scratch/gate/go-c$i"; done
    built=0
    for j in "${jobs_[@]}"; do wait "$j" && built=$((built + 1)); done
    if [ "$ids" = 8 ] && [ "$paths" = 8 ] && [ "$uids" = 8 ] && [ "$built" = 8 ]; then
        ok "8 concurrent builds get 8 distinct leases (8 ids, 8 paths, 8 nixbld owners) and all succeed"
    else
        not_ok "8 concurrent builds: $ids ids, $paths paths, $uids owners, $built built"
    fi
    stop_daemon
done
stop_daemon

# ---------------------------------------------------------- helper stopped
log "builddird stopped, nix-daemon still configured to use it"
kill "$bd_pid"
wait "$bd_pid" 2>/dev/null
start_daemon down "$bd_sock" false || skip "nix-daemon did not start (log: $logs/nix-daemon-down.log)"
before=$(find /tmp -mindepth 1 | sort)
if submit down --no-out-link; then
    not_ok "with builddird stopped the build fails: it succeeded"
else
    after=$(find /tmp -mindepth 1 | sort)
    if grep -q "build-dir-helper: cannot connect to $bd_sock" "$scratch/out-down" && [ "$before" = "$after" ]; then
        ok "with builddird stopped the build fails with the helper's error, and nothing is written to /tmp"
        grep "build-dir-helper" "$scratch/out-down" | head -2 | diag
    else
        not_ok "with builddird stopped: wrong error or /tmp changed"
        diag < "$scratch/out-down"
        diff <(echo "$before") <(echo "$after") | diag
    fi
fi
stop_daemon

summary
