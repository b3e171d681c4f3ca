# Shared by the e2e scripts (sourced, not run): TAP-style results, a
# timestamped log, and the loud skip.
#
#   ok / not_ok DESCRIPTION      count and print `ok N - ...` / `not ok N - ...`
#   check DESCRIPTION CMD...     ok if CMD succeeds, else not ok
#   diag                         indent stdin as a `#` comment
#   log MESSAGE                  `# [Ns] MESSAGE`, N seconds since sourcing
#   skip REASON                  `SKIPPED: REASON`, exit 1 (0 with
#                                BUILDDIR_E2E_ALLOW_SKIP=1): never a silent pass
#   summary                      `P passed, F failed`; status 0 only if F = 0
# shellcheck shell=bash

n=0 passed=0 failed=0
ok()     { n=$((n + 1)); passed=$((passed + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
diag() { sed 's/^/#   /'; }

t0=$SECONDS
log() { echo "# [$((SECONDS - t0))s] $*"; }

skip() {
    echo "SKIPPED: $*"
    if [ "${BUILDDIR_E2E_ALLOW_SKIP:-0}" = 1 ]; then exit 0; fi
    exit 1
}

summary() { echo "$passed passed, $failed failed"; [ "$failed" = 0 ]; }
