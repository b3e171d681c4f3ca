#!/usr/bin/env bash
# README's first command, `./install.sh`, exactly as written, on a fresh
# Debian 12 without systemd as PID 1 (a plain systemd-nspawn container of
# the cached bookworm root that tests/e2e/systemd.sh builds), as root, from
# a checkout under 0700 directories (/work and /root are made 0700 in the
# guest). The checkout and the host's Rust toolchain are bind-mounted at
# their own paths, so `cargo build --release` finds the release build of
# the host up to date (run `cargo build --release --bins` first, else it
# builds inside the container). install.sh apt-installs a C toolchain in the
# guest (network needed). Then a user without any Rust toolchain runs the
# README's Quickstart example, and `apt remove` leaves no daemon and no mount.
#
# Usage (as root): tests/e2e/install-script.sh
# Environment: BUILDDIR_E2E_CACHE (default /var/cache/builddird-e2e),
#   BUILDDIR_E2E_ALLOW_SKIP=1 exit 0 (not 1) when it cannot run here.
# Output: TAP lines, then `N passed, M failed`.

set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
cache=${BUILDDIR_E2E_CACHE:-/var/cache/builddird-e2e}
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || skip "must run as root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || skip "systemd-nspawn not found (apt-get install systemd-container)"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
[ -x "$cargo_home/bin/cargo" ] \
    || skip "no cargo in $cargo_home/bin (the test binds the host's rustup toolchain into the guest)"
# The newest cached bookworm root of tests/e2e/systemd.sh.
cached=$(ls -dt "$cache"/rootfs/*/ 2>/dev/null | while read -r d; do
    [ -e "$d/.complete" ] && { echo "${d%/}"; break; }
done)
[ -n "$cached" ] || skip "no cached bookworm root in $cache/rootfs: run tests/e2e/systemd.sh first"

work=$(mktemp -d "$cache/install.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
log "copying $cached"
cp -a "$cached" "$root" && rm -f "$root/.complete"
if command -v systemd-id128 >/dev/null; then systemd-id128 new > "$root/etc/machine-id"; fi

cat > "$root/var/tmp/guest.sh" <<'SCRIPT'
set -u
repo=$1
mkdir -p /work && chmod 0700 /work /root
echo "MODES=$(stat -c %a /work /root | tr '\n' ' ')"
useradd --create-home --shell /bin/sh builder
cd "$repo" && ./install.sh > /var/tmp/install.log 2>&1; echo "INSTALL_RC=$?"
echo "SOCKET=$(stat -c '%a %F' /run/builddird.sock 2>&1)"
echo "BUILDER_RUST=$(setpriv --reuid=builder --regid=builder --init-groups --reset-env -- sh -c 'command -v cargo rustc' || echo none)"
out=$(setpriv --reuid=builder --regid=builder --init-groups --reset-env -- sh -c \
    "builddir-ctl run -- sh -c 'printf \"#!/bin/sh\\necho hello from \\\$PWD\\n\" > hello && chmod +x hello && ./hello'" 2>&1)
echo "README_RC=$? $out"
apt-get remove -y -q builddird > /var/tmp/remove.log 2>&1; echo "REMOVE_RC=$?"
echo "LEFT=$(pgrep -x builddird | tr '\n' ' ')"
echo "MOUNT_LEFT=$(findmnt -n -o TARGET --mountpoint /var/lib/builddird)"
SCRIPT

args=(--quiet --directory="$root" --machine="bdd-install-$$" --register=no --as-pid2
    --console=pipe --bind="$repo" --bind="$cargo_home:$cargo_home" --system-call-filter=quotactl_fd)
[ -d "$rustup_home" ] && args+=(--bind="$rustup_home:$rustup_home")
[ -d /run/systemd/system ] || args+=(--keep-unit)
log "running ./install.sh in a container without systemd"
out=$(cd / && timeout 900 systemd-nspawn "${args[@]}" \
    --setenv=PATH="$cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --setenv=CARGO_HOME="$cargo_home" --setenv=RUSTUP_HOME="$rustup_home" \
    /bin/bash /var/tmp/guest.sh "$repo" 2>&1 </dev/null | tr -d '\r')
printf '%s\n' "$out" | diag
field() { sed -n "s/^$1=//p" <<<"$out" | head -1; }
if [ "$(field INSTALL_RC)" != 0 ] && [ -f "$root/var/tmp/install.log" ]; then
    tail -25 "$root/var/tmp/install.log" | diag
fi
check "the checkout sits under 0700 directories [$(field MODES)]" test "$(field MODES)" = "700 700 "
check "./install.sh exits 0 as root without sudo or systemd [$(field INSTALL_RC)]" test "$(field INSTALL_RC)" = 0
check "it started builddird on /run/builddird.sock [$(field SOCKET)]" test "$(field SOCKET)" = "666 socket"
check "the user has no Rust toolchain [$(field BUILDER_RUST)]" test "$(field BUILDER_RUST)" = none
check "the README's Quickstart example works for that user" \
    grep -q '^README_RC=0 hello from /var/lib/builddird/b/[0-9a-f]*/build$' <<<"$out"
check "apt remove builddird succeeds [$(field REMOVE_RC)]" test "$(field REMOVE_RC)" = 0
check "after apt remove no builddird runs [$(field LEFT)]" test -z "$(field LEFT)"
check "after apt remove nothing is mounted at /var/lib/builddird [$(field MOUNT_LEFT)]" \
    test -z "$(field MOUNT_LEFT)"
summary
