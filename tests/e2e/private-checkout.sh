#!/usr/bin/env bash
# The privileged suites pass from a checkout that only root can traverse
# (a checkout under Debian's 0700 /root): every binary a test runs as
# another uid must be placed where that uid can reach it.
#
# Cheap by construction: no rebuild. The already built debug test
# executables and the binaries they run are hard-linked (copied across
# file systems) into <private>/target/debug under a fresh 0700 directory,
# and the suites that run binaries as other uids are run from there, with
# that directory as their working directory. A helper binary run straight
# from target/ by another uid fails there with `Permission denied`.
#
# Usage (as root, after `cargo build --workspace --bins`):
#   tests/e2e/private-checkout.sh [SUITE...]   (default: lifecycle policy limits adversarial)
# Environment: BUILDDIR_E2E_ALLOW_SKIP=1 exit 0 (not 1) when it cannot run.
# Output: one TAP line per suite, then `N passed, M failed`.

set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
# shellcheck source=tests/e2e/lib.sh
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || skip "must run as root (the suites mount and switch uids)"
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(lifecycle policy limits adversarial)

target=${CARGO_TARGET_DIR:-$repo/target}
# Where cargo put each suite's executable (no rebuild when it is current).
exes=$(cd "$repo" && cargo test -p builddir-tests --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//')
for b in builddird builddir-ctl bd-probe bd-attack; do
    [ -x "$target/debug/$b" ] || {
        echo "error: $target/debug/$b missing: run 'cargo build --workspace --bins' first" >&2
        echo "0 passed, 1 failed"; exit 1
    }
done

private=$(mktemp -d /var/tmp/builddird-private.XXXXXX)
trap 'rm -rf --one-file-system "$private"' EXIT
chmod 0700 "$private"
mkdir -p "$private/checkout/target/debug/deps"
place() { ln -f "$1" "$2" 2>/dev/null || cp -p "$1" "$2"; }
for b in builddird builddir-ctl bd-probe bd-attack; do
    place "$target/debug/$b" "$private/checkout/target/debug/$b"
done
log "binaries placed under $private (mode $(stat -c %a "$private"))"

# Proof that the setting bites: an unprivileged uid cannot run a binary
# from there. (Through sh: setpriv itself still holds root's capabilities
# when it calls execve, so it would get through.)
if setpriv --reuid=61001 --regid=61001 --clear-groups /bin/sh -c '"$0" --version' \
        "$private/checkout/target/debug/builddir-ctl" >/dev/null 2>&1; then
    not_ok "uid 61001 cannot run a binary under the 0700 directory"
else
    ok "uid 61001 cannot run a binary under the 0700 directory"
fi

for suite in "${suites[@]}"; do
    exe=$(grep -E "/deps/${suite}-[0-9a-f]+$" <<<"$exes" | head -1)
    if [ -z "$exe" ]; then
        not_ok "suite $suite: no test executable found (cargo test -p builddir-tests --no-run)"
        continue
    fi
    copy=$private/checkout/target/debug/deps/$(basename "$exe")
    place "$exe" "$copy"
    log "running $suite from $copy"
    out=$(cd "$private/checkout" && "$copy" --test-threads=2 2>&1); rc=$?
    summary_line=$(grep -E '^test result:' <<<"$out" | tail -1)
    if [ "$rc" = 0 ] && grep -q ' 0 failed' <<<"$summary_line"; then
        ok "suite $suite passes from a 0700 checkout [$summary_line]"
    else
        tail -40 <<<"$out" | diag
        not_ok "suite $suite passes from a 0700 checkout (rc=$rc) [$summary_line]"
    fi
done
summary
