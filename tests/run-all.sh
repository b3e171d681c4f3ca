#!/usr/bin/env bash
# Runs every test suite of the project, installing what they need first.
# For Debian 12 (or Ubuntu), as root (no sudo needed), from a checkout
# anywhere (a 0700 home included): `tests/run-all.sh`.
#
# What it changes on this host:
#   - apt-get installs the tools the suites use when missing: util-linux,
#     debootstrap, systemd-container, systemd, nix-bin, python3 and
#     python3-prometheus-client, dpkg-dev, g++, pkg-config, and qemu-system-x86 from
#     bookworm-backports (it writes
#     /etc/apt/sources.list.d/bookworm-backports.list on Debian 12 for it)
#   - for the Nix daemon test: a deb-src line for bookworm
#     (/etc/apt/sources.list.d/bookworm-src.list), nix's build-dependencies,
#     busybox-static and jq; an empty /nix mount point, removed again if it
#     made it
#   - target/ in the checkout (debug and release builds, the .deb)
#   - caches under /var/cache/builddird-e2e (a debootstrap root for the
#     systemd container, one for the quota VM, the patched Nix; reused by
#     later runs)
#   - scratch under /var/tmp (removed after each suite; a test that crashes
#     may leave directories in /var/tmp/builddird-tests)
#   - no package of the project is installed on the host: the .deb is
#     installed and removed inside the systemd container only
#
# Every suite runs even if an earlier one failed; a summary at the end names
# each with its result and time. Exit status 0 only if all passed.
#   - without a cargo >= 1.85 on PATH (or in ~/.cargo/bin): Rust from
#     rustup in ~/.cargo and ~/.rustup (Debian 12's own rustc is too old)
set -uo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run-all.sh: run it as root: the privileged suites mount, chown, switch uids and boot containers" >&2
    exit 1
fi
# shellcheck source=packaging/ensure-cargo.sh
. "$repo/packaging/ensure-cargo.sh"
ensure_cargo || exit 1

# ------------------------------------------------------------ what we need ---
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt (unattended-upgrades, a parallel job) instead of failing.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v nix-instantiate >/dev/null || need+=(nix-bin)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
# libbuilddir's tests compile C and C++ against its header (pkg-config flags).
command -v c++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
# The metrics suite parses the daemon's output with the reference parser,
# from Debian's own package (pip would refuse: externally-managed-environment).
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import prometheus_client' 2>/dev/null \
    || need+=(python3 python3-prometheus-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt_get update -qq
    apt_get install -y -qq "${need[@]}"
fi
# The project-quota VM test. On Debian 12 from bookworm-backports: bookworm's
# own 7.2 would remove the machine's backported qemu-utils (it conflicts with
# qemu-system-common < 8.0).
if ! command -v qemu-system-x86_64 >/dev/null; then
    if grep -q '^VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' \
            > /etc/apt/sources.list.d/bookworm-backports.list
        apt_get update -qq
        apt_get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
    else
        apt_get install -y -qq --no-install-recommends qemu-system-x86
    fi
fi

# ------------------------------------------------------------- the suites ---
results=()
failed=0
# step NAME CMD...: runs CMD, records its result and time, never stops the run.
step() {
    local name=$1 start=$SECONDS rc
    shift
    echo "== $name: $*"
    "$@"; rc=$?
    local took=$((SECONDS - start))
    if [ "$rc" = 0 ]; then
        results+=("ok      ${took}s  $name")
    else
        results+=("FAILED  ${took}s  $name (exit $rc)")
        failed=$((failed + 1))
    fi
    return 0
}

# 1. Unit, property and integration suites against the real daemon (they
#    run the binaries the build step makes: `cargo test` alone does not
#    build another package's binaries).
step "build (debug)" cargo build --workspace --bins
step "cargo test --workspace" cargo test --workspace --no-fail-fast
# 2. The same privileged suites from a checkout only root can traverse.
step "suites from a 0700 checkout" tests/e2e/private-checkout.sh
# 3. The Debian package, and a real systemd 252 as PID 1 with it installed.
step "build (release)" cargo build --release --bins
step "package (.deb)" packaging/deb/build.sh
step "systemd container" tests/e2e/systemd.sh
#    README's ./install.sh as written, without systemd, from a 0700 checkout
#    (in a container of the same cached root).
step "install.sh" tests/e2e/install-script.sh
# 4. Project quotas in a VM with Debian's kernel.
step "project quotas (VM)" tests/e2e/quota-vm.sh
# 5. Static checks of the units, and of the NixOS files.
step "unit files" tests/e2e/verify-units.sh
step "NixOS files" tests/e2e/nix-parse.sh
# 6. The benchmark harness at tiny sizes, so it never rots.
step "benchmark smoke" cargo run -p builddir-bench -- --smoke
# 7. A patched multi-user Nix daemon takes its build dirs from builddird on a
#    noexec /tmp (builds Nix once, cached under /var/cache/builddird-e2e/nix).
step "Nix daemon" tests/e2e/nix-daemon.sh

echo
echo "== summary"
printf '%s\n' "${results[@]}"
if [ "$failed" -gt 0 ]; then
    echo "$failed step(s) failed"
    exit 1
fi
echo "all ${#results[@]} steps passed"
