# Sourced by install.sh and tests/run-all.sh: puts a cargo (Rust >= 1.85)
# on PATH. Debian 12's own rustc (1.63) is too old for this workspace, so a
# missing toolchain comes from rustup (https://rustup.rs), installed for the
# current user (root) into ~/.cargo and ~/.rustup, minimal profile, with
# rustfmt and clippy.
# shellcheck shell=bash

ensure_cargo() {
    [ -x "$HOME/.cargo/bin/cargo" ] && PATH=$HOME/.cargo/bin:$PATH
    if command -v cargo >/dev/null; then
        local v
        v=$(cargo --version 2>/dev/null | sed -n 's/^cargo 1\.\([0-9]*\)\..*/\1/p')
        if [ -n "$v" ] && [ "$v" -ge 85 ]; then return 0; fi
        echo "$(cargo --version 2>/dev/null) is older than 1.85; installing a current one with rustup"
    else
        echo "cargo not found; installing Rust with rustup into $HOME/.cargo (https://rustup.rs)"
    fi
    command -v curl >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates
    }
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --component rustfmt,clippy --no-modify-path || {
        echo "error: rustup failed; install Rust >= 1.85 yourself (https://rustup.rs) and run again" >&2
        return 1
    }
    PATH=$HOME/.cargo/bin:$PATH
}
