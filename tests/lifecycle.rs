//! A lease's life: allocation as another uid, privacy, exec, release,
//! disconnect, keep, and what `list` shows (issue 2, acceptance 2 and 4).

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use builddir_tests::{eventually, require_root, Daemon, Probe, USER_A, USER_B};

#[test]
fn second_uid_gets_a_private_exec_capable_dir_it_owns() {
    if !require_root("second_uid_gets_a_private_exec_capable_dir_it_owns") {
        return;
    }
    let d = Daemon::start("uid");
    let probe = Probe::start(&d.socket, USER_A, "hello-1.0");
    let r = &probe.report;
    assert_eq!(r["uid"], USER_A.uid, "{r}");
    assert_eq!(r["gid"], USER_A.gid, "{r}");
    assert_eq!(r["mode"], 0o700, "{r}");
    assert_eq!(r["fd_is_dir"], true, "{r}");
    assert_eq!(r["cloexec"], true, "received fd must be close-on-exec: {r}");
    assert_eq!(r["nosuid"], true, "{r}");
    assert_eq!(r["nodev"], true, "{r}");
    assert_eq!(r["noexec"], false, "{r}");
    assert_eq!(r["path_matches_dir"], true, "{r}");
    assert_eq!(
        r["exec_ok"], true,
        "a binary copied into the dir must run: {r}"
    );
    let path = probe.path();
    assert!(
        path.as_os_str().len() <= 48 + d.root.as_os_str().len() - "/var/lib/builddird".len(),
        "{path:?}"
    );

    // A third uid can neither list nor enter it.
    for (what, script) in [
        ("list", "ls \"$1\""),
        ("enter", "cd \"$1\" && echo inside"),
        ("list the outer dir", "ls \"$1/..\""),
    ] {
        let out = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(&path)
            .uid(USER_B.uid)
            .gid(USER_B.gid)
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "uid {} could {what} {path:?}",
            USER_B.uid
        );
        assert!(
            out.stdout.is_empty(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Permission denied") || err.contains("can't cd"),
            "{what}: {err}"
        );
    }
    // Outer dir: root:root; its group bits are the mask of the ACL that
    // lets the owner alone traverse it.
    let outer = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(
        (outer.uid(), outer.gid(), outer.mode() & 0o7777),
        (0, 0, 0o710)
    );

    assert!(probe.finish().success());
    assert!(
        eventually(Duration::from_secs(10), || !path.exists()),
        "released dir still exists"
    );
}

#[test]
fn disconnect_and_kill9_release_the_lease_and_list_shows_it_before() {
    if !require_root("disconnect_and_kill9_release_the_lease_and_list_shows_it_before") {
        return;
    }
    let d = Daemon::start("disc");
    let mut probe = Probe::start(&d.socket, USER_A, "job-42");
    let path = probe.path();
    let rows = d.list_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], probe.id());
    assert_eq!(row["name"], "job-42");
    assert_eq!(row["state"], "live");
    assert_eq!(row["owner_uid"], USER_A.uid);
    assert_eq!(row["client_pid"], probe.child.id());
    assert_eq!(row["client_command"], "bd-probe");
    assert_eq!(row["path"], path.to_str().unwrap());
    assert!(row["age_secs"].as_u64().unwrap() < 60);
    // Human table has the same facts, aligned with a header.
    let table = String::from_utf8(d.ctl(&["list", "--all"]).stdout).unwrap();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in [
        "ID", "OWNER", "PID", "COMMAND", "NAME", "AGE", "STATE", "PATH",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let line = lines.next().unwrap();
    assert!(
        line.contains(&probe.id()) && line.contains("job-42") && line.contains("live"),
        "{line}"
    );
    assert_eq!(
        header.find("PATH"),
        line.find(path.to_str().unwrap()),
        "columns aligned:\n{table}"
    );

    // kill -9 of the client: the daemon sees the connection close.
    probe.child.kill().unwrap();
    probe.child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !path.exists()),
        "dir survived its client's death"
    );
    assert!(
        eventually(Duration::from_secs(10), || d.list_all().is_empty()),
        "{:?}",
        d.list_all()
    );
    assert!(
        d.entries("trash").is_empty(),
        "trash not emptied: {:?}",
        d.entries("trash")
    );
}

#[test]
fn users_see_and_release_only_their_own_leases() {
    if !require_root("users_see_and_release_only_their_own_leases") {
        return;
    }
    let d = Daemon::start("own");
    let a = Probe::start(&d.socket, USER_A, "a");
    let as_b = |args: &[&str]| {
        d.ctl_cmd(args)
            .uid(USER_B.uid)
            .gid(USER_B.gid)
            .output()
            .unwrap()
    };
    let out = as_b(&["--json", "list"]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = as_b(&["list", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission-denied"));
    let out = as_b(&["release", &a.id()]);
    assert_eq!(out.status.code(), Some(1), "B released A's lease");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-found"));
    assert!(a.path().exists(), "A's dir must survive B's attempt");
    // A itself may release by id from another connection; a second release
    // is a clean not-found, not a second deletion.
    let as_a = |args: &[&str]| {
        d.ctl_cmd(args)
            .uid(USER_A.uid)
            .gid(USER_A.gid)
            .output()
            .unwrap()
    };
    assert!(as_a(&["release", &a.id()]).status.success());
    let again = as_a(&["release", &a.id()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(eventually(Duration::from_secs(10), || !a.path().exists()));
    drop(a);
}

#[test]
fn run_passes_exit_status_and_keep_failed_keeps_the_tree() {
    if !require_root("run_passes_exit_status_and_keep_failed_keeps_the_tree") {
        return;
    }
    let d = Daemon::start("run");
    let ok = d
        .ctl_cmd(&[
            "run",
            "--",
            "sh",
            "-c",
            "test \"$TMPDIR\" = \"$PWD\" && exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let no_tmp = d
        .ctl_cmd(&[
            "run",
            "--no-tmpdir",
            "--",
            "sh",
            "-c",
            "test \"$TMPDIR\" != \"$PWD\"",
        ])
        .env("TMPDIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(no_tmp.status.success());
    let missing = d.ctl(&["run", "--", "/nonexistent/cmd"]);
    assert_eq!(missing.status.code(), Some(127));
    let kept = d.ctl(&[
        "run",
        "--keep-failed",
        "--",
        "sh",
        "-c",
        "echo evidence > log; exit 3",
    ]);
    assert_eq!(kept.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&kept.stderr);
    let kept_path = stderr.trim().rsplit(' ').next().unwrap();
    assert!(kept_path.contains("/kept/"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(format!("{kept_path}/log")).unwrap(),
        "evidence\n"
    );
    let rows = d.list_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "kept");
    // An operator removes it.
    assert!(d
        .ctl(&["remove", rows[0]["id"].as_str().unwrap()])
        .status
        .success());
    assert!(eventually(Duration::from_secs(10), || {
        !std::path::Path::new(kept_path).exists()
    }));
}

#[test]
fn usage_errors_exit_2_and_connection_errors_say_what_to_do() {
    if !require_root("usage_errors_exit_2_and_connection_errors_say_what_to_do") {
        return;
    }
    let out = Command::new(builddir_tests::bin("builddir-ctl"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(builddir_tests::bin("builddir-ctl"))
        .args(["--socket", "/nonexistent/bd.sock", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot connect to /nonexistent/bd.sock: no such file"),
        "{err}"
    );
    assert!(err.contains("builddird.socket"), "{err}");
}

use std::os::unix::process::CommandExt;
