//! Policy, limits, keep-failed and the operator's toolbox.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use builddir_tests::{
    bin, bin_for_others, eventually, require_root, Daemon, DaemonOpts, Ident, Probe, Scratch,
    USER_A, USER_B,
};

fn with_config(tag: &str, config: &str) -> Daemon {
    with(tag, config, "bind")
}

fn with(tag: &str, config: &str, backing: &'static str) -> Daemon {
    Daemon::start_with(
        tag,
        DaemonOpts {
            backing,
            config: Some(config.into()),
            ..Default::default()
        },
    )
}

/// `builddir-ctl ARGS` as uid/gid with supplementary `groups` (setpriv).
fn ctl_as(d: &Daemon, who: Ident, groups: &[u32], args: &[&str]) -> std::process::Output {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", who.uid))
        .arg(format!("--regid={}", who.gid));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={}", groups.join(",")));
    }
    cmd.arg(bin_for_others("builddir-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args);
    cmd.output().expect("setpriv (util-linux)")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn allow_lists_and_operator_group_decide_by_peer_credentials() {
    if !require_root("allow_lists_and_operator_group") {
        return;
    }
    let c = Ident {
        uid: 61_003,
        gid: 61_003,
    };
    let d = with_config(
        "allow",
        "allowed_users = [\"61001\"]\nallowed_groups = [\"62000\"]\noperator_group = \"62001\"\n",
    );
    // Outside the allow-list: refused at the handshake.
    let out = ctl_as(&d, USER_B, &[], &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission-denied") && stderr(&out).contains("allowed_users"),
        "{}",
        stderr(&out)
    );
    // The same through the client library, whose hello is pipelined with
    // the allocation: the refusal, not a broken pipe, is what it reports.
    let refused = Probe::start(&d.socket, USER_B, "refused");
    assert_eq!(
        refused.report["kind"], "permission-denied",
        "{}",
        refused.report
    );
    // In an allowed supplementary group: served.
    let out = ctl_as(&d, USER_B, &[62_000], &["run", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (Its lease is listed as reaping until its tree is gone.)
    assert!(eventually(Duration::from_secs(10), || d
        .list_all()
        .is_empty()));
    // An allowed user holds a lease; a user sees only theirs, the operator all.
    let a = Probe::start(&d.socket, USER_A, "mine");
    let out = ctl_as(&d, USER_B, &[62_000], &["--json", "list"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = ctl_as(&d, USER_B, &[62_000], &["list", "--all"]);
    assert!(stderr(&out).contains("permission-denied"));
    let out = ctl_as(&d, c, &[62_001], &["--json", "list", "--all"]);
    assert!(out.status.success(), "operator refused: {}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["id"], a.id());
    // The operator may remove it.
    let out = ctl_as(&d, c, &[62_001], &["remove", &a.id()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(eventually(Duration::from_secs(10), || !a.path().exists()));
    drop(a);
}

#[test]
fn owner_grants_allow_only_their_ranges_and_the_decision_is_logged() {
    if !require_root("owner_grants") {
        return;
    }
    let d = with_config(
        "grant",
        "[[owner_grants]]\nusers = [\"61001\"]\nuids = [\"61100-61110\"]\ngids = [\"61100\"]\n",
    );
    let granted = Probe::start_with(&d.socket, USER_A, "for-build-user", &["61105:61100"]);
    assert_eq!(granted.report["uid"], 61_105, "{}", granted.report);
    assert_eq!(granted.report["gid"], 61_100);
    let outside = Probe::start_with(&d.socket, USER_A, "outside", &["61200:61100"]);
    assert_eq!(
        outside.report["kind"], "permission-denied",
        "{}",
        outside.report
    );
    let other = Probe::start_with(&d.socket, USER_B, "not-granted", &["61105:61100"]);
    assert_eq!(
        other.report["kind"], "permission-denied",
        "{}",
        other.report
    );
    let log = d.log_text();
    assert!(
        log.contains("owner assignment decision")
            && log.contains("granted=true")
            && log.contains("granted=false"),
        "{log}"
    );
    drop(granted);
}

#[test]
fn each_lease_limit_yields_its_typed_error_and_raising_it_serves_again() {
    if !require_root("lease_limits") {
        return;
    }
    let mut d = with_config("limits", "max_leases_per_uid = 2\nmax_leases = 3\n");
    let a1 = Probe::start(&d.socket, USER_A, "a1");
    let a2 = Probe::start(&d.socket, USER_A, "a2");
    let a3 = Probe::start(&d.socket, USER_A, "a3");
    assert_eq!(a3.report["kind"], "quota-exceeded");
    assert!(
        a3.report["error"]
            .as_str()
            .unwrap()
            .contains("max_leases_per_uid = 2"),
        "{}",
        a3.report
    );
    let b1 = Probe::start(&d.socket, USER_B, "b1");
    let b2 = Probe::start(&d.socket, USER_B, "b2");
    assert_eq!(b2.report["kind"], "quota-exceeded");
    assert!(
        b2.report["error"]
            .as_str()
            .unwrap()
            .contains("max_leases = 3"),
        "{}",
        b2.report
    );
    drop((a1, a2, a3, b1, b2));
    // Raise the limits and restart: served again.
    d.terminate();
    d.set_config("max_leases_per_uid = 10\nmax_leases = 10\n");
    d.spawn();
    let many: Vec<Probe> = (0..3)
        .map(|i| Probe::start(&d.socket, USER_A, &format!("again-{i}")))
        .collect();
    for p in &many {
        assert_eq!(p.report["exec_ok"], true, "{}", p.report);
    }
}

#[test]
fn below_the_free_space_threshold_allocation_is_refused_with_no_space() {
    if !require_root("free_space_threshold") {
        return;
    }
    // A 16 MiB tmpfs; refuse below 10 MiB free.
    let d = with(
        "space",
        "tmpfs_size = \"16m\"\nmin_free_bytes = 10485760\n",
        "tmpfs",
    );
    let first = Probe::start(&d.socket, USER_A, "filler");
    assert_eq!(first.report["exec_ok"], true);
    // The build writes 8 MiB: now below the threshold.
    let big = first.path().join("big");
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=8", "status=none"])
        .arg(format!("of={}", big.display()))
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let second = Probe::start(&d.socket, USER_B, "refused");
    assert_eq!(second.report["kind"], "no-space", "{}", second.report);
    assert!(
        second.report["error"]
            .as_str()
            .unwrap()
            .contains("min_free_bytes = 10485760"),
        "{}",
        second.report
    );
    drop(first);
    // Reaped, and its space back (a tree in trash or a file still held
    // open would keep the root below the threshold for good).
    let free = || rustix::fs::statvfs(&d.root).map_or(0, |v| v.f_bavail * v.f_frsize);
    assert!(
        eventually(Duration::from_secs(10), || d.entries("trash").is_empty()
            && d.entries("b").is_empty()
            && free() >= 10_485_760),
        "the filler's 8 MiB were not given back: {} bytes free",
        free()
    );
    let third = Probe::start(&d.socket, USER_B, "after");
    assert_eq!(third.report["exec_ok"], true, "{}", third.report);
}

#[test]
fn keep_failed_hands_the_tree_over_without_touching_root_files_or_setid_bits() {
    if !require_root("keep_hand_over") {
        return;
    }
    let d = with_config(
        "keep",
        "kept_total_max_count = 2\n[[owner_grants]]\nusers = [\"61001\"]\nuids = [\"61100-61110\"]\ngids = [\"61100\"]\n",
    );
    // A root-owned file on the same mount (hard links cannot cross mounts).
    let secret = d.root.join("root-secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let _unprotected = builddir_tests::allow_unprotected_hardlinks();

    // The orchestrator (USER_A) leases a dir for build user 61105.
    let lease = builddir_client::blocking::Client::connect(&d.socket)
        .unwrap()
        .allocate_for(
            "will-fail",
            builddir_client::Owner {
                uid: 61_105,
                gid: 61_100,
            },
        );
    // (allocated as root here: root may assign any owner)
    let lease = lease.unwrap();
    let path = lease.path().to_owned();
    let build = Command::new("/bin/sh")
        .arg("-c")
        .arg("set -e; cd \"$1\"; cp /bin/true suid-bin; chmod 4755 suid-bin; mkdir -p sub; cp /bin/true sub/sgid; chmod 2755 sub/sgid; ln \"$2\" hardlink-to-root; ln -s /etc/shadow link; echo log > log")
        .arg("sh")
        .arg(&path)
        .arg(&secret)
        .uid(61_105)
        .gid(61_100)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    let kept = lease.keep().unwrap();
    assert!(kept.to_string_lossy().contains("/kept/"), "{kept:?}");
    // Requester is root here; the tree now belongs to root, the build user's
    // setuid bits are gone, the root-owned file is untouched.
    let meta = |p: &str| std::fs::symlink_metadata(kept.join(p)).unwrap();
    assert_eq!(meta("suid-bin").mode() & 0o7777, 0o755);
    assert_eq!(meta("sub/sgid").mode() & 0o7777, 0o755);
    assert_eq!(meta("log").uid(), 0);
    assert_eq!(meta("suid-bin").uid(), 0);
    let s = std::fs::metadata(&secret).unwrap();
    assert_eq!(
        (s.uid(), s.mode() & 0o7777),
        (0, 0o600),
        "root's file changed"
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only");

    // Same through the CLI for an unprivileged requester with a grant-less
    // own build: everything ends up theirs, setuid stripped.
    let out = d
        .ctl_cmd(&[
            "run",
            "--keep-failed",
            "--",
            "sh",
            "-c",
            "cp /bin/true s; chmod 4755 s; exit 9",
        ])
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(9));
    let kept2 = stderr(&out).trim().rsplit(' ').next().unwrap().to_owned();
    let m = std::fs::metadata(format!("{kept2}/s")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (USER_A.uid, 0o755));
    // The requester can reach its kept tree; another user cannot.
    let reach = |who: Ident| {
        Command::new("ls")
            .arg(&kept2)
            .uid(who.uid)
            .gid(who.gid)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(reach(USER_A));
    assert!(!reach(USER_B));

    // Retention: kept_total_max_count = 2 (over all owners; the per-owner
    // kept_max_count is shown by the adversarial suite), a third keep
    // deletes the oldest.
    let out = d.ctl(&["run", "--keep-failed", "--", "false"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        eventually(Duration::from_secs(10), || !kept.exists()),
        "oldest kept tree not deleted"
    );
    assert!(
        std::path::Path::new(&kept2).exists(),
        "retention deleted the wrong tree"
    );
    assert!(
        d.log_text().contains("retention: kept_total_max_count"),
        "{}",
        d.log_text()
    );
    let kept_rows: Vec<_> = d
        .list_all()
        .into_iter()
        .filter(|r| r["state"] == "kept")
        .collect();
    assert_eq!(kept_rows.len(), 2, "{kept_rows:?}");
    // gc removes kept trees (operator: all of them).
    let out = d.ctl(&["--json", "gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 2);
    assert!(eventually(Duration::from_secs(10), || d
        .entries("kept")
        .is_empty()));
}

#[test]
fn list_size_reports_bytes_of_live_trees() {
    if !require_root("list_size") {
        return;
    }
    let d = Daemon::start("size");
    let p = Probe::start(&d.socket, USER_A, "sized");
    std::fs::write(p.path().join("blob"), vec![7u8; 1 << 20]).unwrap();
    let rows: serde_json::Value =
        serde_json::from_slice(&d.ctl(&["--json", "list", "--all", "--size"]).stdout).unwrap();
    let size = rows[0]["size_bytes"].as_u64().expect("size present");
    assert!(size >= 1 << 20, "size {size}");
    let table = String::from_utf8(d.ctl(&["list", "--all", "--size"]).stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("SIZE"), "{table}");
    drop(p);
}

#[test]
fn check_reports_each_problem_with_its_fix_and_passes_a_good_host() {
    if !require_root("check") {
        return;
    }
    // Good host: the running daemon's own config.
    let d = Daemon::start("checkgood");
    let cfg = d.scratch.dir.join("good.toml");
    std::fs::write(
        &cfg,
        format!("root = {:?}\nsocket = {:?}\n", d.root, d.socket),
    )
    .unwrap();
    let out = Command::new(bin("builddir-ctl"))
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Bad host: a noexec external mount, and no socket.
    let s = Scratch::new("checkbad");
    let root = s.dir.join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "noexec,nosuid,nodev,mode=0755",
            "tmpfs"
        ])
        .arg(&root)
        .status()
        .unwrap()
        .success());
    let cfg = s.dir.join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {:?}\nsocket = {:?}\nbacking = \"external\"\n",
            root,
            s.dir.join("missing.sock")
        ),
    )
    .unwrap();
    let out = Command::new(bin("builddir-ctl"))
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let fail = |what: &str| {
        text.lines()
            .any(|l| l.starts_with("FAIL") && l.contains(what) && l.contains("fix:"))
    };
    assert!(fail("noexec"), "{text}");
    assert!(fail("missing.sock"), "{text}");

    // A world-writable root.
    let ww = s.dir.join("ww");
    std::fs::create_dir(&ww).unwrap();
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(&cfg, format!("root = {:?}\nsocket = {:?}\n", ww, d.socket)).unwrap();
    let out = Command::new(bin("builddir-ctl"))
        .arg("--json")
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let root_finding = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "root")
        .unwrap();
    assert_eq!(root_finding["ok"], false);
    assert!(
        root_finding["fix"].as_str().unwrap().contains("chmod go-w"),
        "{root_finding}"
    );
    builddir_tests::unmount_below(&root);
}

#[test]
fn run_owner_makes_the_dir_for_another_user_for_root_and_grant_holders_only() {
    if !require_root("run_owner") {
        return;
    }
    let d = with_config(
        "runowner",
        "[[owner_grants]]\nusers = [\"61001\"]\nuids = [\"61010-61020\"]\ngids = [\"61010\"]\n",
    );
    // Root, by numbers: the directory is the owner's and CMD runs as the
    // owner, inside it.
    let out = d.ctl(&[
        "run",
        "--owner",
        "61004:61005",
        "--",
        "sh",
        "-c",
        "id -u; id -g; id -G; stat -c '%u %g %a' .",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "61004\n61005\n61005\n61004 61005 700\n"
    );
    // Root, by names (user only: its primary group).
    let out = d.ctl(&[
        "run",
        "--owner",
        "nobody",
        "--",
        "sh",
        "-c",
        "stat -c '%u %g' .",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nobody = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == "nobody").then(|| format!("{} {}\n", f[2], f[3]))
        })
        .expect("a nobody account");
    assert_eq!(String::from_utf8_lossy(&out.stdout), nobody);

    // An unprivileged caller without a grant for that owner: one line,
    // the cause and the fix.
    let out = ctl_as(
        &d,
        USER_B,
        &[],
        &["run", "--owner", "61011:61010", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("permission-denied") && err.contains("owner_grants"),
        "{err}"
    );
    assert!(d.list_all().is_empty());

    // A grant holder: the directory is the owner's; CMD runs as the caller
    // (who cannot enter it) and learns the path from BUILDDIR_PATH.
    let xchg = d.scratch.dir.join("xchg");
    std::fs::create_dir(&xchg).unwrap();
    std::fs::set_permissions(&xchg, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let script = format!(
        "echo \"$BUILDDIR_PATH\" > {x}/path; while [ ! -e {x}/go ]; do sleep 0.05; done",
        x = xchg.display()
    );
    let mut child = Command::new("setpriv")
        .arg(format!("--reuid={}", USER_A.uid))
        .arg(format!("--regid={}", USER_A.gid))
        .arg("--clear-groups")
        .arg(bin_for_others("builddir-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["run", "--owner", "61011:61010", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(
            xchg.join("path")
        )
        .is_ok_and(|p| p.ends_with("/build\n"))),
        "{}",
        d.log_text()
    );
    let path = std::fs::read_to_string(xchg.join("path")).unwrap();
    let m = std::fs::metadata(path.trim()).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (61011, 61010, 0o700));
    std::fs::write(xchg.join("go"), "").unwrap();
    let status = builddir_tests::wait_timeout(&mut child, Duration::from_secs(10)).unwrap();
    assert!(status.success());
}

#[test]
fn keep_for_hands_the_tree_to_the_named_user_and_only_root_or_a_grant_may_name_one() {
    if !require_root("keep_for") {
        return;
    }
    let d = with_config(
        "keep-for",
        "[[owner_grants]]\nusers = [\"61001\"]\nuids = [\"61100-61110\"]\ngids = [\"61100\"]\n",
    );
    // Root, like the Nix daemon: a build user's lease, kept for the user
    // who asked for the build (USER_B).
    let mut conn = builddir_client::blocking::Client::connect(&d.socket).unwrap();
    let build_user = builddir_client::Owner {
        uid: 61_105,
        gid: 61_100,
    };
    let dir = conn.allocate_dir("failed", Some(build_user), None).unwrap();
    let id = dir.id().to_owned();
    let build = Command::new("/bin/sh")
        .arg("-c")
        .arg("set -e; cd \"$1\"; cp /bin/true suid-bin; chmod 4755 suid-bin; mkdir sub; echo log > sub/log")
        .arg("sh")
        .arg(dir.path())
        .uid(build_user.uid)
        .gid(build_user.gid)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", stderr(&build));
    let to_b = builddir_client::Owner {
        uid: USER_B.uid,
        gid: USER_B.gid,
    };
    let kept = conn.keep_dir_for(dir, to_b).unwrap();
    let kept = std::path::PathBuf::from(kept.kept_path.unwrap());
    let meta = |p: &str| std::fs::symlink_metadata(kept.join(p)).unwrap();
    for p in ["suid-bin", "sub", "sub/log"] {
        assert_eq!(
            (meta(p).uid(), meta(p).gid()),
            (USER_B.uid, USER_B.gid),
            "{p}"
        );
    }
    assert_eq!(meta("suid-bin").mode() & 0o7777, 0o755, "setuid bit kept");
    let reach = |who: Ident| {
        Command::new("cat")
            .arg(kept.join("sub/log"))
            .uid(who.uid)
            .gid(who.gid)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(reach(USER_B), "the user it was kept for cannot read it");
    assert!(!reach(USER_A), "another user can read it");
    assert!(
        !reach(Ident {
            uid: build_user.uid,
            gid: build_user.gid
        }),
        "the build user can still reach the kept tree"
    );
    // It is USER_B's: in their own listing, and theirs to collect.
    let out = ctl_as(&d, USER_B, &[], &["--json", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("USER_B does not see the tree kept for them: {rows}"));
    assert_eq!(row["state"], "kept");
    assert_eq!(row["owner_uid"], USER_B.uid);
    let out = ctl_as(&d, USER_B, &[], &["--json", "gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(eventually(Duration::from_secs(10), || !kept.exists()));

    // A grant holder may keep for an owner in its grant, not for anyone
    // else; a refused keep-for leaves the lease live.
    let in_grant = Probe::start_with(&d.socket, USER_A, "granted", &["61105:61100"]);
    let out = ctl_as(
        &d,
        USER_A,
        &[],
        &["release", &in_grant.id(), "--keep-for", "61106:61100"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let kept_text = String::from_utf8_lossy(&out.stdout).into_owned();
    let kept_at = kept_text.trim().rsplit(' ').next().unwrap().to_owned();
    let st = std::fs::metadata(&kept_at).unwrap();
    assert_eq!((st.uid(), st.gid()), (61_106, 61_100), "{kept_text}");
    drop(in_grant);

    let probe = Probe::start_with(&d.socket, USER_A, "not-for-b", &["61105:61100"]);
    let out = ctl_as(
        &d,
        USER_A,
        &[],
        &[
            "release",
            &probe.id(),
            "--keep-for",
            &format!("{}:{}", USER_B.uid, USER_B.gid),
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("permission-denied") && err.contains("owner_grants"),
        "{err}"
    );
    let live = d
        .list_all()
        .into_iter()
        .any(|r| r["id"] == probe.id().as_str() && r["state"] == "live");
    assert!(live, "a refused keep-for ended the lease");
    assert_eq!(
        probe.finish().code(),
        Some(0),
        "the probe's own release failed"
    );
}
