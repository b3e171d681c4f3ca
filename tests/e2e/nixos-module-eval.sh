#!/usr/bin/env bash
# Evaluates nixos/module.nix with nixpkgs' real module system (only nixpkgs'
# lib/ is needed: no packages are built or fetched) and checks the result:
#   - the module evaluates with defaults and with every option set;
#   - options are typed (a bad `backing` is an evaluation error);
#   - settings render without nulls, with the typed defaults;
#   - the rendered socket + service pass `systemd-analyze verify`, and the
#     service's `systemd-analyze security` exposure is within the threshold;
#   - the service's hardening is identical to systemd/builddird.service.
#
# Needs nix-instantiate (Debian: nix-bin), systemd-analyze, and a nixpkgs lib/
# directory: BUILDDIR_NIXPKGS_LIB=/path/to/nixpkgs/lib, or <nixpkgs> on
# NIX_PATH. Without them: SKIPPED (exit 1 unless BUILDDIR_E2E_ALLOW_SKIP=1).
set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)
max_exposure=${BUILDDIR_MAX_EXPOSURE:-3.5}

skip() {
    echo "SKIPPED: $*"
    [ "${BUILDDIR_E2E_ALLOW_SKIP:-0}" = 1 ] && exit 0
    exit 1
}
command -v nix-instantiate >/dev/null || skip "nix-instantiate not found (apt-get install nix-bin)"
command -v systemd-analyze >/dev/null || skip "systemd-analyze not found"
command -v python3 >/dev/null || skip "python3 not found"

lib_dir=${BUILDDIR_NIXPKGS_LIB:-}
if [ -z "$lib_dir" ]; then
    np=$(nix-instantiate --find-file nixpkgs 2>/dev/null) && lib_dir=$np/lib
fi
[ -n "$lib_dir" ] && [ -f "$lib_dir/default.nix" ] \
    || skip "no nixpkgs lib: set BUILDDIR_NIXPKGS_LIB=/path/to/nixpkgs/lib (a nixpkgs checkout's lib/ suffices)"

n=0 passed=0 failed=0
ok()     { n=$((n + 1)); passed=$((passed + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
diag() { sed 's/^/#   /'; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ev OUT [nix-instantiate args...]: evaluate into OUT (JSON).
ev() {
    local out=$1; shift
    nix-instantiate --eval --strict --json "$here/nixos-module-eval.nix" \
        --arg lib "import $lib_dir" "$@" > "$out" 2> "$out.err"
}

if ev "$tmp/default.json"; then
    ok "module evaluates with services.builddird.enable = true"
else
    diag < "$tmp/default.json.err"; not_ok "module evaluates with services.builddird.enable = true"
fi
settings=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["settings"], sort_keys=True))' "$tmp/default.json")
[ "$settings" = '{"backing": "bind", "root": "/nix/var/nix/builddird"}' ] \
    && ok "default settings: root=/nix/var/nix/builddird, backing=bind, nothing else [$settings]" \
    || not_ok "default settings: root=/nix/var/nix/builddird, backing=bind, nothing else [$settings]"

if ev "$tmp/full.json" \
    --arg extraConfig '{ operatorGroup = "builddir-ops"; socketGroup = "builders"; allowedUsers = [ "alice" ]; allowedGroups = [ "nixbld" ]; }' \
    --arg settings '{ backing = "tmpfs"; tmpfs_size = "8g"; max_leases_per_uid = 64; }'; then
    got=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps([d["settings"], d["groups"]], sort_keys=True))' "$tmp/full.json")
    want='[{"allowed_groups": ["nixbld"], "allowed_users": ["alice"], "backing": "tmpfs", "max_leases_per_uid": 64, "operator_group": "builddir-ops", "root": "/nix/var/nix/builddird", "tmpfs_size": "8g"}, ["builddir-ops", "builders"]]'
    [ "$got" = "$want" ] && ok "every option set: settings and groups rendered" \
        || { echo "#   got:  $got"; echo "#   want: $want"; not_ok "every option set: settings and groups rendered"; }
    grep -q 'SocketGroup=builders' <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket"])' "$tmp/full.json") \
        && ok "socketGroup sets the socket's SocketGroup=" || not_ok "socketGroup sets the socket's SocketGroup="
else
    diag < "$tmp/full.json.err"; not_ok "module evaluates with every option set"
fi

# nixDaemon.enable: off by default (nix.conf untouched); on, the Nix daemon's
# build-dir-helper setting names the socket and nix-daemon is ordered after it.
got=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps([d["nixSettings"], d["nixDaemon"]]))' "$tmp/default.json")
[ "$got" = '[{}, null]' ] && ok "nixDaemon.enable defaults to off: nix.settings and nix-daemon untouched" \
    || { echo "#   got: $got"; not_ok "nixDaemon.enable defaults to off: nix.settings and nix-daemon untouched"; }
if ev "$tmp/nix.json" --arg extraConfig '{ nixDaemon.enable = true; }'; then
    got=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps([d["nixSettings"], d["nixDaemon"]], sort_keys=True))' "$tmp/nix.json")
    want='[{"build-dir-helper": "/run/builddird.sock"}, {"after": ["builddird.socket"], "wants": ["builddird.socket"]}]'
    [ "$got" = "$want" ] && ok "nixDaemon.enable = true: nix.settings.build-dir-helper = /run/builddird.sock, nix-daemon wants and is after builddird.socket" \
        || { echo "#   got:  $got"; echo "#   want: $want"; not_ok "nixDaemon.enable = true wires nix.settings and nix-daemon"; }
else
    diag < "$tmp/nix.json.err"; not_ok "module evaluates with nixDaemon.enable = true"
fi

if ev "$tmp/bad.json" --arg settings '{ backing = "nfs"; }'; then
    not_ok "backing = \"nfs\" is rejected at evaluation"
else
    grep -q 'backing' "$tmp/bad.json.err" && ok "backing = \"nfs\" is rejected at evaluation (names the option)" \
        || { diag < "$tmp/bad.json.err"; not_ok "backing = \"nfs\" is rejected at evaluation (names the option)"; }
fi

# The rendered units through systemd-analyze.
root=$tmp/root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" 2>/dev/null || true
python3 - "$tmp/default.json" "$root/etc/systemd/system" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
open(sys.argv[2] + "/builddird.service", "w").write(d["service"])
open(sys.argv[2] + "/builddird.socket", "w").write(d["socket"])
EOF
exe=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["execStart"].split()[0])' "$tmp/default.json")
install -D -m 0755 /dev/null "$root$exe"
out=$(systemd-analyze verify --root="$root" builddird.socket builddird.service 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify on the NixOS-rendered units: clean"
else
    printf '%s\n' "$out" | diag; not_ok "systemd-analyze verify on the NixOS-rendered units (rc=$rc)"
fi
score=$(systemd-analyze security --offline=true --no-pager "$root/etc/systemd/system/builddird.service" 2>&1 \
    | sed -n 's/.*Overall exposure level for builddird.service: \([0-9.]*\).*/\1/p')
if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN{exit !(s<=m)}'; then
    ok "NixOS service security exposure $score <= $max_exposure"
else
    not_ok "NixOS service security exposure ${score:-unknown} <= $max_exposure"
fi

# Same hardening as systemd/builddird.service (keys that are not
# installation-specific). Repeated keys are compared as the list of their
# lines; CapabilityBoundingSet as a set of capabilities; yes == true.
normalize() {
    python3 - "$1" <<'EOF'
import re, sys
skip = {"ExecStart", "Description", "Documentation", "StateDirectory", "StateDirectoryMode",
        "Requires", "After", "RequiresMountsFor"}
vals = {}
section = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("["):
        section = line
        continue
    if section != "[Service]" or not line or line.startswith("#") or "=" not in line:
        continue
    k, v = line.split("=", 1)
    if k in skip:
        continue
    v = {"true": "yes", "false": "no"}.get(v, v)
    vals.setdefault(k, []).append(v)
for k in sorted(vals):
    v = vals[k]
    if k == "CapabilityBoundingSet":
        v = [" ".join(sorted(" ".join(v).split()))]
    print(k + "=" + " | ".join(v))
EOF
}
if diff_out=$(diff <(normalize "$repo/systemd/builddird.service") <(normalize "$root/etc/systemd/system/builddird.service")); then
    ok "NixOS service hardening == systemd/builddird.service"
else
    printf '%s\n' "$diff_out" | diag
    not_ok "NixOS service hardening == systemd/builddird.service (< systemd/, > NixOS)"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
