//! Start, refusal, restart and socket activation of the real daemon.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use builddir_tests::activation::{activated, listen, NotifySocket};
use builddir_tests::{
    bin, eventually, require_root, wait_timeout, Daemon, DaemonOpts, Probe, Scratch, USER_A,
};

/// Runs builddird with `args` expecting it to refuse; returns its stderr.
fn refused(args: &[&std::ffi::OsStr]) -> String {
    let mut child = Command::new(bin("builddird"))
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(10)).expect("builddird should exit");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "builddird started despite: {err}");
    err
}

fn args_for(s: &Scratch, root: &std::path::Path, backing: &str) -> Vec<std::ffi::OsString> {
    let cfg = s.dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    vec![
        "--config".into(),
        cfg.into(),
        "--root".into(),
        root.into(),
        "--socket".into(),
        s.dir.join("bd.sock").into(),
        "--backing".into(),
        backing.into(),
    ]
}

/// A refusal must leave nothing mounted below the scratch dir.
fn assert_nothing_mounted(s: &Scratch) {
    assert!(
        !builddir_tests::unmount_below_exists(&s.dir),
        "nothing may be mounted after a refusal"
    );
}

fn refused_with(s: &Scratch, root: &std::path::Path, backing: &str) -> String {
    let args = args_for(s, root, backing);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    refused(&refs)
}

#[test]
fn refuses_a_root_not_owned_by_root() {
    if !require_root("refuses_a_root_not_owned_by_root") {
        return;
    }
    let s = Scratch::new("own");
    let root = s.dir.join("root");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(USER_A.uid), Some(0)).unwrap();
    let err = refused_with(&s, &root, "bind");
    assert!(
        err.contains("owned by uid 61001, not root") && err.contains("chown root:root"),
        "{err}"
    );
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one line, cause and fix: {err}"
    );
    assert_nothing_mounted(&s);
}

#[test]
fn refuses_a_group_or_world_writable_root() {
    if !require_root("refuses_a_group_or_world_writable_root") {
        return;
    }
    let s = Scratch::new("ww");
    let root = s.dir.join("root");
    std::fs::create_dir(&root).unwrap();
    for mode in [0o777, 0o775, 0o1777] {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = refused_with(&s, &root, "bind");
        assert!(
            err.contains("writable by group or others") && err.contains("chmod go-w"),
            "{mode:o}: {err}"
        );
        assert_nothing_mounted(&s);
    }
}

#[test]
fn refuses_a_root_below_a_symlink() {
    if !require_root("refuses_a_root_below_a_symlink") {
        return;
    }
    let s = Scratch::new("sym");
    std::fs::create_dir_all(s.dir.join("real/root")).unwrap();
    std::os::unix::fs::symlink(s.dir.join("real"), s.dir.join("link")).unwrap();
    let err = refused_with(&s, &s.dir.join("link/root"), "bind");
    assert!(
        err.contains("is a symlink") && err.contains("real path"),
        "{err}"
    );
    assert_nothing_mounted(&s);
}

#[test]
fn refuses_an_external_root_still_mounted_noexec() {
    if !require_root("refuses_an_external_root_still_mounted_noexec") {
        return;
    }
    let s = Scratch::new("noexec");
    let root = s.dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "noexec,nosuid,nodev,mode=0755",
            "tmpfs",
        ])
        .arg(&root)
        .status()
        .unwrap();
    assert!(ok.success());
    let err = refused_with(&s, &root, "external");
    assert!(
        err.contains("mounted noexec") && err.contains("remount"),
        "{err}"
    );
    // And one without nosuid.
    assert!(Command::new("mount")
        .args(["-o", "remount,exec,suid"])
        .arg(&root)
        .status()
        .unwrap()
        .success());
    let err = refused_with(&s, &root, "external");
    assert!(err.contains("without nosuid"), "{err}");
    // Unmounted and external: not a mount point.
    builddir_tests::unmount_below(&root);
    let err = refused_with(&s, &root, "external");
    assert!(err.contains("not a mount point"), "{err}");
}

#[test]
fn a_second_daemon_on_the_same_socket_leaves_the_first_alone() {
    if !require_root("a_second_daemon_on_the_same_socket_leaves_the_first_alone") {
        return;
    }
    let d = Daemon::start("twice");
    let probe = Probe::start(&d.socket, USER_A, "busy");
    let s = Scratch::new("twice2");
    let cfg = s.dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    // Same socket, same root: must fail on the socket before touching the root.
    let err = refused(&[
        "--config".as_ref(),
        cfg.as_os_str(),
        "--root".as_ref(),
        d.root.as_os_str(),
        "--socket".as_ref(),
        d.socket.as_os_str(),
    ]);
    assert!(err.contains("in use by a running builddird"), "{err}");
    // Other socket, same root: the root lock refuses.
    let err = refused(&[
        "--config".as_ref(),
        cfg.as_os_str(),
        "--root".as_ref(),
        d.root.as_os_str(),
        "--socket".as_ref(),
        s.dir.join("other.sock").as_os_str(),
    ]);
    assert!(err.contains("in use by another builddird"), "{err}");
    assert!(
        probe.path().exists(),
        "the first daemon's lease was disturbed"
    );
    assert!(
        d.ctl(&["status"]).status.success(),
        "first daemon no longer serves"
    );
    assert_eq!(d.list_all().len(), 1);
    drop(probe);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    if !require_root("a_stale_socket_file_is_replaced") {
        return;
    }
    let mut d = Daemon::start("stale");
    d.kill9(); // leaves the socket file behind, nobody listening
    assert!(d.socket.exists());
    d.spawn();
    assert!(d.ctl(&["status"]).status.success());
}

#[test]
fn kill9_then_restart_reaps_orphans_and_unreclaimed_leases_and_nothing_else() {
    if !require_root("kill9_then_restart_reaps_orphans_and_unreclaimed_leases_and_nothing_else") {
        return;
    }
    let mut d = Daemon::start_with_config("orphan", "reclaim_grace_secs = 2\n");
    let mut probe = Probe::start(&d.socket, USER_A, "victim");
    let path = probe.path();
    // Something of the operator's under root, and a kept tree: both must stay.
    std::fs::create_dir(d.root.join("operator-notes")).unwrap();
    std::fs::write(d.root.join("operator-notes/keep-me"), "x").unwrap();
    let kept = d.ctl(&[
        "run",
        "--keep-failed",
        "--",
        "sh",
        "-c",
        "echo k > f; false",
    ]);
    assert_eq!(kept.status.code(), Some(1));
    d.kill9();
    // The client dies too, while the daemon is down: nobody will reclaim.
    probe.child.kill().unwrap();
    probe.child.wait().unwrap();
    // Leftovers of a crash mid-allocation: a temp dir, and a lease dir
    // without its registry record.
    std::fs::create_dir_all(d.root.join("b/.new-00000000deadbeef/build")).unwrap();
    std::fs::create_dir_all(d.root.join("b/00000000feedf00d/build")).unwrap();
    assert!(path.exists(), "nothing deleted while the daemon is dead");
    d.spawn();
    // Orphans go at once; the live lease waits out its grace period.
    assert!(
        eventually(Duration::from_secs(5), || d.entries("b").len() == 1),
        "orphans not moved: {:?}",
        d.entries("b")
    );
    assert!(
        path.exists(),
        "a lease with a record was reaped before its grace period"
    );
    let rows = d.list_all();
    let live: Vec<_> = rows.iter().filter(|r| r["state"] == "live").collect();
    assert_eq!(live.len(), 1, "{rows:?}");
    assert_eq!(
        live[0]["name"], "victim",
        "the registry kept the lease's name"
    );
    assert!(
        eventually(Duration::from_secs(10), || !path.exists()),
        "unreclaimed lease not released after the grace period:\n{}",
        d.log_text()
    );
    assert!(eventually(Duration::from_secs(10), || d
        .entries("trash")
        .is_empty()));
    assert_eq!(
        std::fs::read_to_string(d.root.join("operator-notes/keep-me")).unwrap(),
        "x"
    );
    let rows = d.list_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "kept");
    let log = d.log_text();
    assert!(
        log.contains("orphan build dir") && log.contains("reclaim grace period expired"),
        "{log}"
    );
}

#[test]
fn socket_activation_sends_ready_only_after_the_mount_is_verified() {
    if !require_root("socket_activation_sends_ready_only_after_the_mount_is_verified") {
        return;
    }
    let s = Scratch::new("act");
    let root = s.dir.join("root");
    let notify = NotifySocket::bind(&s.dir.join("notify"));
    let listener = listen(&s.dir.join("activated.sock"));
    let cfg = s.dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.clone().into(),
        "--root".into(),
        root.clone().into(),
    ];

    // A bad root first: the daemon exits and READY=1 never comes.
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut bad = activated(&bin("builddird"), &args, &listener)
        .env("NOTIFY_SOCKET", s.dir.join("notify"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut bad, Duration::from_secs(10)).unwrap();
    assert!(!status.success());
    let (ready, seen) = notify.wait_for("READY=1", Duration::from_millis(300));
    assert!(!ready, "READY=1 sent for an unverified root: {seen:?}");
    builddir_tests::unmount_below(&root);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut child = activated(&bin("builddird"), &args, &listener)
        .env("NOTIFY_SOCKET", s.dir.join("notify"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (ready, seen) = notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready, "no READY=1: {seen:?}");
    // At READY the mount is in place with the right flags.
    let vfs = rustix::fs::statvfs(&root).unwrap();
    use rustix::fs::StatVfsMountFlags as F;
    assert!(vfs.f_flag.contains(F::NOSUID | F::NODEV) && !vfs.f_flag.contains(F::NOEXEC));
    assert!(seen.iter().any(|m| m.contains("STATUS=0 live")), "{seen:?}");
    // It serves on the inherited socket (we never gave it --socket).
    let out = Command::new(bin("builddir-ctl"))
        .arg("--socket")
        .arg(s.dir.join("activated.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // SIGTERM: STOPPING=1, exit 0.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (stopping, seen) = notify.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(stopping, "{seen:?}");
    assert!(wait_timeout(&mut child, Duration::from_secs(10))
        .unwrap()
        .success());
}

#[test]
fn watchdog_pings_arrive_when_asked_for() {
    if !require_root("watchdog_pings_arrive_when_asked_for") {
        return;
    }
    let s = Scratch::new("wd");
    let notify = NotifySocket::bind(&s.dir.join("notify"));
    let listener = listen(&s.dir.join("wd.sock"));
    let cfg = s.dir.join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        cfg.into(),
        "--root".into(),
        s.dir.join("root").into(),
    ];
    let mut child = activated(&bin("builddird"), &args, &listener)
        .env("NOTIFY_SOCKET", s.dir.join("notify"))
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(notify.wait_for("READY=1", Duration::from_secs(10)).0);
    let (pinged, seen) = notify.wait_for("WATCHDOG=1", Duration::from_secs(2));
    assert!(pinged, "{seen:?}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn config_errors_name_the_key_and_line() {
    if !require_root("config_errors_name_the_key_and_line") {
        return;
    }
    let s = Scratch::new("cfg");
    let cfg = s.dir.join("bad.toml");
    std::fs::write(&cfg, "root = \"/var/lib/x\"\nmax_lease = 5\n").unwrap();
    let err = refused(&["--config".as_ref(), cfg.as_os_str(), "--check".as_ref()]);
    assert!(err.contains("line 2") && err.contains("max_lease"), "{err}");
    let ok = Command::new(bin("builddird"))
        .args(["--check", "--config"])
        .arg(s.dir.join("missing.toml"))
        .output()
        .unwrap();
    assert!(
        !ok.status.success(),
        "an explicitly named missing config must fail"
    );
}

#[test]
fn the_packaged_config_example_is_valid_with_every_key_uncommented() {
    if !require_root("the_packaged_config_example_is_valid") {
        return;
    }
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.example.toml"),
    )
    .unwrap();
    // `# key = value` and `# [[table]]` lines become live; prose stays.
    let live: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with("[[")
                    || rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_owned()
            }
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        live.lines().filter(|l| l.contains(" = ")).count() >= 25,
        "{live}"
    );
    let s = Scratch::new("example");
    let cfg = s.dir.join("config.toml");
    std::fs::write(&cfg, &live).unwrap();
    let out = Command::new(bin("builddird"))
        .args(["--check", "--config"])
        .arg(&cfg)
        .arg("--root")
        .arg(s.dir.join("root"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{live}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restart_is_idempotent_on_an_existing_mount() {
    if !require_root("restart_is_idempotent_on_an_existing_mount") {
        return;
    }
    let mut d = Daemon::start_with(
        "idem",
        DaemonOpts {
            backing: "tmpfs",
            ..Default::default()
        },
    );
    let before = mounts_at(&d.root);
    assert_eq!(before, 1);
    // Killed, so the mount stays (an idle daemon stopped by a signal takes
    // down the mount it made).
    d.kill9();
    assert_eq!(mounts_at(&d.root), 1);
    d.spawn();
    assert_eq!(mounts_at(&d.root), 1, "restart stacked a second mount");
    assert!(d.ctl(&["status"]).status.success());
}

fn mounts_at(p: &std::path::Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_string_lossy();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(&*p))
        .count()
}
