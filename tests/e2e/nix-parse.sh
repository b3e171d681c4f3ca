#!/usr/bin/env bash
# Parses every .nix file under nixos/ with `nix-instantiate --parse` and fails
# on any syntax error. Needs nix-instantiate (Debian: apt-get install nix-bin);
# evaluates nothing and needs no nixpkgs.
set -uo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd -- "$here/../.." && pwd)

if ! command -v nix-instantiate >/dev/null; then
    echo "SKIPPED: nix-instantiate not found (apt-get install nix-bin)"
    [ "${BUILDDIR_E2E_ALLOW_SKIP:-0}" = 1 ] && exit 0
    exit 1
fi

passed=0 failed=0 n=0
while IFS= read -r -d '' f; do
    n=$((n + 1))
    rel=${f#"$repo"/}
    if err=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
        passed=$((passed + 1)); echo "ok $n - parse $rel"
    else
        failed=$((failed + 1)); echo "not ok $n - parse $rel"
        printf '%s\n' "$err" | sed 's/^/#   /'
    fi
done < <(find "$repo/nixos" -name '*.nix' -type f -print0 | sort -z)

if [ "$n" = 0 ]; then
    echo "not ok 1 - no .nix files found under $repo/nixos"
    failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
