//! libbuilddir from C: `tests/c/capi_test.c` compiled with `cc` against the
//! library *installed* by `crates/capi/install.sh` (header and
//! `pkg-config` flags from the install), run as root and as an unprivileged
//! uid against the real builddird — plain, and again built with
//! `-fsanitize=address,undefined` (leak detection on).
//!
//! Each C scenario checks its own outcomes (fds back to baseline,
//! `FD_CLOEXEC` on everything the library holds, documented errors) and
//! ends with `PASS <scenario>`; here we assert that line and the exit code.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use builddir_tests::{require_root, wait_timeout, Daemon, DaemonOpts, Ident, USER_A, USER_B};

/// The built library (target/<profile>/deps, next to this test).
fn built_lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir").to_owned();
    assert!(
        deps.join("libbuilddir.so").exists() && deps.join("libbuilddir.a").exists(),
        "libbuilddir.so/.a not in {}; `cargo test -p builddir-tests` builds them (builddir-capi is a dependency)",
        deps.display()
    );
    deps
}

fn source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(name)
}

/// Programs built against an install in a scratch prefix (a 0755 tree
/// outside target/, so another uid can run them).
struct Programs {
    plain: PathBuf,
    sanitized: PathBuf,
    list_fds: PathBuf,
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn build(d: &Daemon) -> Programs {
    let dir = d.scratch.dir.join("capi");
    let prefix = dir.join("prefix");
    std::fs::create_dir_all(&dir).unwrap();
    let installer = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/capi/install.sh");
    run_ok(
        Command::new("sh")
            .arg(&installer)
            .arg(&prefix)
            .env("BUILDDIR_LIB_FROM", built_lib_dir()),
        "crates/capi/install.sh",
    );
    let pc_path = prefix.join("lib/pkgconfig");
    let flags = run_ok(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "builddir"])
            .env("PKG_CONFIG_PATH", &pc_path),
        "pkg-config --cflags --libs builddir",
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    assert!(flags.contains("-lbuilddir"), "pkg-config said {flags:?}");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let rpath = format!("-Wl,-rpath,{}", prefix.join("lib").display());
    let cc = |src: &str, out: &Path, extra: &[&str]| {
        run_ok(
            Command::new("cc")
                .args(["-std=c11", "-g", "-Wall", "-Wextra", "-Werror"])
                .args(extra)
                .arg(source(src))
                .arg("-o")
                .arg(out)
                .args(&flags)
                .arg(&rpath),
            &format!("cc {src}"),
        );
    };
    let programs = Programs {
        plain: dir.join("capi_test"),
        sanitized: dir.join("capi_test_asan"),
        list_fds: dir.join("list_fds"),
    };
    cc("capi_test.c", &programs.plain, &[]);
    cc(
        "capi_test.c",
        &programs.sanitized,
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ],
    );
    cc("list_fds.c", &programs.list_fds, &[]);
    programs
}

/// Runs `program SCENARIO SOCKET ARGS…` as `who` (root: `None`) and
/// asserts it passed.
fn scenario(program: &Path, who: Option<Ident>, args: &[&str]) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir("/")
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    if let Some(who) = who {
        // A second identity: the child drops to an unused uid/gid before
        // exec (std drops supplementary groups, then setgid, setuid).
        cmd.uid(who.uid).gid(who.gid);
    }
    let out = cmd.output().expect("run capi_test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let as_whom = who.map_or("root".to_owned(), |w| format!("uid {}", w.uid));
    assert!(
        out.status.success() && stdout.contains(&format!("PASS {}", args[0])),
        "{} {args:?} as {as_whom} failed ({}):\n{}\n{}",
        program.display(),
        out.status,
        stdout
            .lines()
            .filter(|l| !l.starts_with("ok: "))
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn socket(d: &Daemon) -> &str {
    d.socket.to_str().expect("UTF-8 scratch path")
}

#[test]
fn c_allocates_writes_execs_in_the_dir_keeps_and_releases_as_root_and_as_another_uid() {
    if !require_root("c_allocates_writes_execs") {
        return;
    }
    let d = Daemon::start("capi-basic");
    let p = build(&d);
    for program in [&p.plain, &p.sanitized] {
        scenario(program, None, &["basic", socket(&d)]);
        scenario(program, Some(USER_A), &["basic", socket(&d)]);
    }
}

#[test]
fn c_root_orchestrator_allocates_for_a_build_user() {
    if !require_root("c_root_orchestrator_owner") {
        return;
    }
    let d = Daemon::start("capi-owner");
    let p = build(&d);
    scenario(&p.plain, None, &["owner", socket(&d), "61105", "61100"]);
}

#[test]
fn c_keep_for_hands_the_tree_to_the_named_user_and_a_refused_owner_leaves_the_lease_held() {
    if !require_root("c_keep_for") {
        return;
    }
    let d = Daemon::start("capi-keep-for");
    let p = build(&d);
    let (b_uid, b_gid) = (USER_B.uid.to_string(), USER_B.gid.to_string());
    for program in [&p.plain, &p.sanitized] {
        // Root (the Nix daemon): a build user's lease, kept for USER_B.
        scenario(
            program,
            None,
            &[
                "keep_for",
                socket(&d),
                "61105",
                "61100",
                &b_uid,
                &b_gid,
                "ok",
            ],
        );
        // An unprivileged caller without a grant may not name USER_B.
        scenario(
            program,
            Some(USER_A),
            &["keep_for", socket(&d), "0", "0", &b_uid, &b_gid, "denied"],
        );
    }
}

#[test]
fn c_build_that_fills_its_size_limit_gets_enospc_and_release_reports_it() {
    if !require_root("c_size_limit") {
        return;
    }
    let d = Daemon::start_with(
        "capi-limit",
        DaemonOpts {
            config: Some(
                "lease_backend = \"tmpfs\"\nlease_size_default = 4194304\nlease_size_max = 67108864\n"
                    .into(),
            ),
            ..Default::default()
        },
    );
    let p = build(&d);
    let mib = (1u64 << 20).to_string();
    scenario(&p.plain, None, &["limit", socket(&d), &mib]);
    scenario(&p.sanitized, Some(USER_A), &["limit", socket(&d), &mib]);
}

#[test]
fn c_errors_daemon_down_policy_refusal_load_and_bad_arguments_are_documented_statuses() {
    if !require_root("c_errors") {
        return;
    }
    let d = Daemon::start("capi-args");
    let p = build(&d);
    let nowhere = d.scratch.dir.join("no-daemon-here.sock");
    for program in [&p.plain, &p.sanitized] {
        scenario(program, None, &["down", nowhere.to_str().unwrap()]);
        scenario(program, None, &["args", socket(&d)]);
        scenario(program, Some(USER_A), &["args", socket(&d)]);
    }
    drop(d);
    // A daemon whose policy admits only uid 61002: uid 61001 is refused.
    let d = Daemon::start_with_config("capi-refused", "allowed_users = [\"61002\"]\n");
    let p = build(&d);
    scenario(&p.plain, Some(USER_A), &["refused", socket(&d)]);
    scenario(&p.sanitized, Some(USER_A), &["refused", socket(&d)]);
    drop(d);
    // One connection per uid: the second is refused for load.
    let d = Daemon::start_with_config("capi-busy", "max_connections_per_uid = 1\n");
    let p = build(&d);
    scenario(&p.plain, Some(USER_A), &["busy", socket(&d)]);
    scenario(&p.sanitized, Some(USER_A), &["busy", socket(&d)]);
}

#[test]
fn c_fork_exec_child_has_none_of_the_library_fds_and_cannot_use_the_connection() {
    if !require_root("c_fork") {
        return;
    }
    let d = Daemon::start("capi-fork");
    let p = build(&d);
    let lister = p.list_fds.to_str().unwrap();
    for program in [&p.plain, &p.sanitized] {
        scenario(program, None, &["fork", socket(&d), lister]);
        scenario(program, Some(USER_A), &["fork", socket(&d), lister]);
        // A child with its parent's PID (PID 1 of nested namespaces).
        scenario(program, None, &["pidns", socket(&d)]);
    }
}

#[test]
fn c_reconnect_after_a_daemon_restart_takes_the_leases_over() {
    if !require_root("c_reconnect") {
        return;
    }
    let mut d = Daemon::start_with_config(
        "capi-reconnect",
        "fd_store = false\nreclaim_grace_secs = 30\n",
    );
    let p = build(&d);
    for (program, who) in [(&p.plain, None), (&p.sanitized, Some(USER_A))] {
        let reclaimed_before = d.log_text().matches("reclaimed").count();
        let mut cmd = Command::new(program);
        cmd.args(["reconnect", socket(&d)])
            .current_dir("/")
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
            .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(who) = who {
            cmd.uid(who.uid).gid(who.gid);
        }
        let mut child = cmd.spawn().expect("run capi_test reconnect");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("capi_test ended before asking for the restart:\n{seen}");
            }
            seen.push_str(&line);
            if line.starts_with("RESTART NOW") {
                break;
            }
        }
        assert!(d.terminate().success(), "daemon did not stop cleanly");
        d.spawn();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("capi_test exits");
        out.read_to_string(&mut seen).unwrap();
        assert!(
            status.success() && seen.contains("PASS reconnect"),
            "reconnect as {who:?} failed ({status}):\n{seen}\n{}",
            d.log_text()
        );
        // Both leases were taken over by the new connection, not merely
        // still inside their grace period.
        assert_eq!(
            d.log_text().matches("reclaimed").count(),
            reclaimed_before + 2,
            "{}",
            d.log_text()
        );
    }
}
