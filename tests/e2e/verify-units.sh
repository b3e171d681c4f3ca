#!/usr/bin/env bash
# Static checks of the systemd units in systemd/:
#   - `systemd-analyze verify` on the socket + service, in a throw-away root
#     that holds the host's stock units and a dummy /usr/local/bin/builddird
#     (verify checks that ExecStart= is executable). Any diagnostic fails,
#     not only a non-zero exit (unknown keys only warn).
#   - `systemd-analyze security --offline=true` stays at or below a threshold.
# Needs systemd-analyze (systemd 252+); runs as any user, changes nothing.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
units=$repo/systemd
max_exposure=${BUILDDIR_MAX_EXPOSURE:-3.5}

if ! command -v systemd-analyze >/dev/null; then
    echo "SKIPPED: systemd-analyze not found (apt-get install systemd)"
    [ "${BUILDDIR_E2E_ALLOW_SKIP:-0}" = 1 ] && exit 0 || exit 1
fi

pass=0 fail=0 n=0
ok()     { n=$((n+1)); pass=$((pass+1)); echo "ok $n - $*"; }
not_ok() { n=$((n+1)); fail=$((fail+1)); echo "not ok $n - $*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc/systemd/system" "$tmp/usr/local/bin" "$tmp/usr/lib/systemd" "$tmp/etc/builddird"
cp -a /usr/lib/systemd/system "$tmp/usr/lib/systemd/" 2>/dev/null || true
cp "$units/builddird.socket" "$units/builddird.service" "$tmp/etc/systemd/system/"
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$units/builddird.service")
install -D -m 0755 /dev/null "$tmp$exec_path"
printf '#!/bin/sh\nexit 0\n' > "$tmp$exec_path"

out=$(systemd-analyze verify --root="$tmp" builddird.socket builddird.service 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify builddird.socket builddird.service: clean"
else
    printf '%s\n' "$out" | sed 's/^/#   /'
    not_ok "systemd-analyze verify builddird.socket builddird.service (rc=$rc)"
fi

# The socket unit must match what the daemon and builddir-ctl default to.
grep -qx 'ListenStream=/run/builddird.sock' "$units/builddird.socket" \
    && ok "socket listens on /run/builddird.sock" || not_ok "socket listens on /run/builddird.sock"

# No setting that would give the service its own mount namespace (see the
# header of builddird.service).
bad=$(grep -E '^(PrivateTmp|PrivateDevices|PrivateMounts|PrivateIPC|ProtectSystem|ProtectHome|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectProc|ProcSubset|ReadOnlyPaths|ReadWritePaths|InaccessiblePaths|ExecPaths|NoExecPaths|TemporaryFileSystem|BindPaths|BindReadOnlyPaths|MountFlags|LogNamespace|RootDirectory|RootImage|PrivateUsers|DynamicUser)=' "$units/builddird.service" || true)
[ -z "$bad" ] && ok "service has no mount-namespace setting" || { printf '#   %s\n' "$bad"; not_ok "service has no mount-namespace setting"; }

sec=$(systemd-analyze security --offline=true --no-pager "$units/builddird.service" 2>&1) || true
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for builddird.service: \([0-9.]*\).*/\1/p')
echo "# systemd-analyze security --offline=true: exposure ${score:-?}"
if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN{exit !(s<=m)}'; then
    ok "security exposure $score <= $max_exposure"
else
    not_ok "security exposure ${score:-unknown} <= $max_exposure"
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
