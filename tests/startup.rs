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

/// Runs `cmd`, panicking with its output if it fails: a missing privileged
/// prerequisite (mount, loop devices, mkfs.ext4) fails the test loudly.
fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// Mounts `source` (a loop image or a pseudo filesystem) on `root` as an
/// external root: `nosuid,nodev` plus `extra` options, private. `Err`: the
/// mount's stderr.
fn mount_root(
    root: &std::path::Path,
    fstype: &str,
    source: &str,
    extra: &str,
) -> Result<(), String> {
    let out = Command::new("mount")
        .args(["-t", fstype, "-o", &format!("nosuid,nodev{extra}"), source])
        .arg(root)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    must(Command::new("mount").arg("--make-private").arg(root));
    Ok(())
}

/// An ext4 image in a tmpfs of its own (the host disk never sees mkfs's
/// writes), ready to be mounted with `-o loop`.
fn ext4_image(d: &Daemon) -> String {
    let disk = d.scratch.dir.join("disk");
    std::fs::create_dir(&disk).unwrap();
    must(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=80m", "builddird-test-disk"])
            .arg(&disk),
    );
    let image = disk.join("ext4.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    must(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    image.to_string_lossy().into_owned()
}

/// A daemon for an external root that the test mounts itself.
fn external_daemon(tag: &str) -> Daemon {
    let d = Daemon::prepare(
        tag,
        DaemonOpts {
            backing: "external",
            ..Default::default()
        },
    );
    std::fs::create_dir(&d.root).unwrap();
    d
}

/// The `acl` lines of `builddird --check` and of `builddir-ctl check` for
/// `d`'s root, which must be the same words; with each tool's success.
fn acl_check_lines(d: &Daemon) -> (String, bool, bool) {
    let daemon_check = d.command().arg("--check").output().unwrap();
    let config = d.scratch.dir.join("ctl-config.toml");
    std::fs::write(
        &config,
        format!(
            "root = {:?}\nsocket = {:?}\nbacking = \"external\"\n",
            d.root, d.socket
        ),
    )
    .unwrap();
    let ctl_check = Command::new(bin("builddir-ctl"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let acl_line = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some("acl"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no acl line in:\n{text}\n{out:?}"))
    };
    let line = acl_line(&daemon_check);
    assert_eq!(
        acl_line(&ctl_check),
        line,
        "builddir-ctl check and builddird --check say it in different words"
    );
    (
        line,
        daemon_check.status.success(),
        ctl_check.status.success(),
    )
}

/// Asserts that `d` refuses to start on its root, which has no POSIX ACLs
/// (`fstype`), in one line naming the cause and the fix; that both checks
/// say so; and that the probe left nothing behind.
fn assert_refused_for_lack_of_acls(d: &Daemon, fstype: &str) {
    let mut child = d
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(20))
        .expect("builddird must exit, not serve a root without ACLs");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "it started on {fstype}: {err}");
    let cause = format!(
        "the build root {} is on a filesystem without POSIX ACLs ({fstype}: setting an ACL fails with EOPNOTSUPP)",
        d.root.display()
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("POSIX ACL")).collect();
    assert_eq!(lines.len(), 1, "one line, cause and fix: {err}");
    assert!(
        lines[0].starts_with("builddird: ")
            && lines[0].contains(&cause)
            && lines[0].contains("ext4, XFS or btrfs with ACLs"),
        "{err}"
    );
    assert!(
        err.trim().lines().last() == Some(lines[0]),
        "the refusal is the last word: {err}"
    );
    // The probe's scratch directory is gone (and no lease was made).
    assert_eq!(d.entries("trash"), Vec::<String>::new());
    assert_eq!(d.entries("b"), Vec::<String>::new());

    let (line, daemon_ok, ctl_ok) = acl_check_lines(d);
    assert!(!daemon_ok && !ctl_ok, "a check passed: {line}");
    assert!(
        line.starts_with("FAIL  acl") && line.contains(&cause) && line.contains("— fix: "),
        "{line}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&d.root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".acl-probe"))
        .collect();
    assert!(leftovers.is_empty(), "the checks left {leftovers:?}");
}

/// Asserts that `d` starts and serves on its root (which has ACLs), and
/// that both checks say the root holds them.
fn assert_serves_with_acls(d: &mut Daemon, fstype: &str) {
    d.spawn();
    let out = d.ctl(&["run", "--", "sh", "-c", "echo hi > f && cat f"]);
    assert!(out.status.success(), "{out:?}\n{}", d.log_text());
    let (line, daemon_ok, _) = acl_check_lines(d);
    assert!(daemon_ok, "{line}");
    assert_eq!(
        line,
        format!(
            "ok    acl      {} holds POSIX ACLs ({fstype}), as every lease's directory needs",
            d.root.display()
        )
    );
    assert!(d.terminate().success());
}

#[test]
fn refuses_a_root_without_posix_acls_in_one_line_and_both_checks_say_so() {
    let test = "refuses_a_root_without_posix_acls_in_one_line_and_both_checks_say_so";
    if !require_root(test) {
        return;
    }
    // ramfs has no extended attributes at all, so no ACLs: on every kernel.
    let d = external_daemon("noacl-ramfs");
    mount_root(&d.root, "ramfs", "builddird-test-ramfs", ",mode=0755").unwrap();
    assert_refused_for_lack_of_acls(&d, "ramfs");

    // The control: ext4 with ACLs (its default) serves, and checks pass.
    let mut d = external_daemon("acl-ext4");
    let image = ext4_image(&d);
    mount_root(&d.root, "ext4", &image, ",loop").unwrap();
    assert_serves_with_acls(&mut d, "ext4");

    // ext4 mounted `noacl`, where the kernel still accepts the option
    // (recent ones refuse it: ext4 there always has ACLs).
    builddir_tests::unmount_below(&d.root);
    match mount_root(&d.root, "ext4", &image, ",loop,noacl") {
        Ok(()) => {
            assert_refused_for_lack_of_acls(&d, "ext4");
            // The fix the line names works.
            must(Command::new("mount")
                .args(["-o", "remount,acl"])
                .arg(&d.root));
            assert_serves_with_acls(&mut d, "ext4");
        }
        Err(why) => eprintln!(
            "SKIPPED: {test}: its ext4 -o noacl case: this kernel refuses the option ({}); the ramfs case above covers a root without ACLs",
            why.replace('\n', " ")
        ),
    }
}
