#!/usr/bin/env bash
# Builds builddird, installs it as a Debian package and starts it with the
# default configuration. For Debian/Ubuntu, as root (no sudo needed), from a
# checkout anywhere.
#
#   ./install.sh              build (cargo), package, install, start
#   ./install.sh --deb FILE   install and start an already built package
#
# What it changes on this host:
#   - apt-get installs what the build needs when missing (gcc, libc6-dev);
#     without a cargo >= 1.85 on PATH (or in ~/.cargo/bin), installs Rust
#     with rustup into ~/.cargo and ~/.rustup (Debian 12's rustc is too old)
#   - target/ in the checkout (cargo build --release; the .deb in target/debian)
#   - installs the package "builddird": /usr/bin/builddird, /usr/bin/builddir-ctl,
#     units in /usr/lib/systemd/system, /usr/lib/sysusers.d/builddird.conf,
#     docs in /usr/share/doc/builddird; creates the group "builddir"
#   - with systemd as PID 1: enables and starts builddird.socket (the daemon
#     starts at the first connection; members of "builddir" may connect)
#   - without systemd: starts `builddird --socket /run/builddird.sock` in the
#     background (pid in /run/builddird.pid, log in /var/log/builddird.log);
#     any local user may connect (socket mode 0666)
#   - the daemon mounts /var/lib/builddird (a bind mount onto itself,
#     nosuid,nodev,exec)
# Undo: apt-get remove builddird (stops the daemon, removes the mount);
# apt-get purge builddird also deletes /var/lib/builddird.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
socket=/run/builddird.sock
deb=

case "${1:-}" in
--deb) deb=${2:?--deb needs a file}; [ -f "$deb" ] || { echo "install.sh: no file $deb" >&2; exit 1; } ;;
"") ;;
-h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "install.sh: run it as root (it installs a package and mounts /var/lib/builddird)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "install.sh: needs apt-get (Debian or Ubuntu); elsewhere see docs/systemd.md" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

say() { echo "install.sh: $*"; }

if [ -z "$deb" ]; then
    # shellcheck source=packaging/ensure-cargo.sh
    . "$here/packaging/ensure-cargo.sh"
    ensure_cargo || exit 1
    need=()
    command -v cc >/dev/null || need+=(gcc libc6-dev)
    command -v dpkg-deb >/dev/null || need+=(dpkg)
    if [ ${#need[@]} -gt 0 ]; then
        say "apt-get install ${need[*]} (to build)"
        apt-get update -qq
        apt-get install -y -qq "${need[@]}"
    fi
    say "cargo build --release (in $here)"
    (cd "$here" && cargo build --release --bins)
    deb=$("$here/packaging/deb/build.sh" "$here/target/release" "$here/target/debian" | tail -1)
    say "built $deb"
fi

# apt reads the file as the unprivileged _apt user when it can; a checkout
# under a 0700 home is not readable by it, so hand apt a readable copy.
staging=$(mktemp -d /var/tmp/builddird-install.XXXXXX)
trap 'rm -rf "$staging"' EXIT
chmod 0755 "$staging"
cp "$deb" "$staging/"
say "apt-get install $(basename "$deb")"
apt-get install -y -qq "$staging/$(basename "$deb")"

wait_for_daemon() {
    for _ in $(seq 1 100); do
        builddir-ctl --socket "$socket" status >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

if [ -d /run/systemd/system ]; then
    # postinst enabled builddird.socket; the first connection starts it.
    if wait_for_daemon; then
        say "builddird.socket is enabled and the daemon answers on $socket"
    else
        echo "install.sh: the daemon does not answer on $socket; see: systemctl status builddird.socket builddird.service; journalctl -u builddird" >&2
        exit 1
    fi
    say "let a user connect: usermod -aG builddir USER (then log in again)"
else
    if [ -f /run/builddird.pid ] && [ "$(cat "/proc/$(cat /run/builddird.pid)/comm" 2>/dev/null)" = builddird ]; then
        say "stopping the builddird started before (pid $(cat /run/builddird.pid))"
        kill -TERM "$(cat /run/builddird.pid)"
        for _ in $(seq 1 100); do [ -d "/proc/$(cat /run/builddird.pid)" ] || break; sleep 0.1; done
    fi
    say "systemd is not running: starting builddird --socket $socket in the background (log: /var/log/builddird.log)"
    setsid builddird --socket "$socket" </dev/null >>/var/log/builddird.log 2>&1 &
    echo $! > /run/builddird.pid
    if wait_for_daemon; then
        say "builddird (pid $(cat /run/builddird.pid)) answers on $socket; stop it with: kill \$(cat /run/builddird.pid)"
    else
        tail -5 /var/log/builddird.log >&2
        echo "install.sh: builddird did not start; the lines above say why" >&2
        exit 1
    fi
fi
builddir-ctl --socket "$socket" status
say "try it as any user: builddir-ctl run -- sh -c 'cp /bin/true ./t && ./t && echo exec works in \$PWD'"
