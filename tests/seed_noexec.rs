//! The seed scenario (the problem this project exists for): on a host whose
//! `/tmp` is a `noexec` tmpfs, a crate with a build script fails with
//! `os error 13` when its target dir is under `/tmp`, and builds under
//! `builddir-ctl run`; the lease directory is gone afterwards.
//!
//! The noexec `/tmp` lives in a private mount namespace (`unshare -m`), so
//! the host's `/tmp` is untouched.

use std::process::Command;
use std::time::Duration;

use builddir_tests::{bin, eventually, require_root, Daemon};

const BUILD_RS: &str = r#"fn main() {
    println!("cargo:rustc-env=SEED_FROM_BUILD_SCRIPT=yes");
}
"#;
const MAIN_RS: &str = r#"fn main() {
    println!("built with a build script: {}", env!("SEED_FROM_BUILD_SCRIPT"));
}
"#;
const CARGO_TOML: &str = r#"[package]
name = "seed"
version = "0.1.0"
edition = "2021"
build = "build.rs"

[workspace]
"#;

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `script` with `/tmp` replaced by a noexec tmpfs in a private mount
/// namespace; returns (success, combined output).
fn with_noexec_tmp(script: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(format!(
            "set -e; mount -t tmpfs -o noexec,nosuid,nodev tmpfs /tmp; {script}"
        ));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("unshare (util-linux) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cargo_build_script_fails_on_noexec_tmp_and_succeeds_under_builddir_ctl_run() {
    if !require_root("cargo_build_script_fails_on_noexec_tmp_and_succeeds_under_builddir_ctl_run") {
        return;
    }
    let d = Daemon::start("seed");
    let krate = d.scratch.dir.join("seed-crate");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(krate.join("Cargo.toml"), CARGO_TOML).unwrap();
    std::fs::write(krate.join("build.rs"), BUILD_RS).unwrap();
    std::fs::write(krate.join("src/main.rs"), MAIN_RS).unwrap();
    let cargo = cargo();
    let krate_s = krate.to_str().unwrap();

    // 1. Without builddird: the build script cannot be executed.
    let (ok, out) = with_noexec_tmp(
        &format!("findmnt -no OPTIONS /tmp; cd {krate_s} && CARGO_TARGET_DIR=/tmp/target {cargo} build --offline"),
        &[],
    );
    assert!(!ok, "build in noexec /tmp unexpectedly succeeded:\n{out}");
    assert!(out.contains("noexec"), "/tmp was not noexec:\n{out}");
    assert!(
        out.contains("os error 13") || out.contains("Permission denied"),
        "expected EACCES from exec of the build script:\n{out}"
    );

    // 2. Under builddir-ctl run (same namespace setup, same noexec /tmp).
    // A copy outside /tmp: the checkout itself may live under /tmp, which
    // the noexec tmpfs hides in the namespace.
    let ctl = d.scratch.dir.join("builddir-ctl");
    std::fs::copy(bin("builddir-ctl"), &ctl).unwrap();
    let script = format!(
        "{ctl} --socket {sock} run --name seed -- /bin/sh -c 'echo LEASE=$PWD; cp -r {krate_s}/. . && CARGO_TARGET_DIR=$PWD/target {cargo} build --offline && ./target/debug/seed'",
        ctl = ctl.display(),
        sock = d.socket.display(),
    );
    let (ok, out) = with_noexec_tmp(&script, &[]);
    assert!(ok, "build under builddir-ctl run failed:\n{out}");
    assert!(out.contains("built with a build script: yes"), "{out}");
    let lease_dir = out
        .lines()
        .find_map(|l| l.strip_prefix("LEASE="))
        .expect("the lease path was printed")
        .to_owned();
    assert!(
        lease_dir.starts_with(d.root.to_str().unwrap()),
        "{lease_dir}"
    );

    // 3. The directory is gone after run exits.
    assert!(
        eventually(Duration::from_secs(30), || !std::path::Path::new(
            &lease_dir
        )
        .exists()),
        "{lease_dir} still exists"
    );
    assert!(eventually(Duration::from_secs(30), || d
        .entries("trash")
        .is_empty()));
    assert!(d.entries("b").is_empty(), "{:?}", d.entries("b"));
}
