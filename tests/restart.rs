//! Restart and upgrade without destroying running builds.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builddir_tests::activation::{listen, start_activated, NotifySocket};
use builddir_tests::{
    bin, eventually, require_root, wait_timeout, Daemon, DaemonOpts, Probe, Scratch, USER_A,
};

/// The daemon's config across a restart: a grace period far longer than
/// the restart, so that no lease expires while the test looks at it.
const CONFIG: &str = "reclaim_grace_secs = 30\n";

#[test]
fn with_the_fd_store_a_lease_survives_a_restart_unnoticed_and_still_releases() {
    if !require_root("fd_store_restart") {
        return;
    }
    let s = Scratch::new("fdstore");
    let notify = NotifySocket::bind(&s.dir.join("notify"));
    let sock = s.dir.join("bd.sock");
    let listener = listen(&sock);
    let mut store: Vec<(String, OwnedFd)> = Vec::new();
    let daemon = start_activated(&s, CONFIG, &listener, &store, &notify);

    let probe = Probe::start(&sock, USER_A, "long-build");
    let path = probe.path();
    let seen = notify.collect_store(&mut store, Duration::from_millis(500));
    let name = format!("lease-{}", probe.id());
    assert!(
        store.iter().any(|(n, _)| *n == name),
        "lease connection not stored: {seen:?}"
    );
    // A stored fd that matches no lease: the new daemon must close it.
    let (stray_ours, stray_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    store.push(("lease-ffffffffffffffff".into(), OwnedFd::from(stray_theirs)));

    // Restart: SIGKILL (the worst case), then start again with the store.
    drop(daemon);
    let started = Instant::now();
    let daemon = start_activated(&s, CONFIG, &listener, &store, &notify);
    eprintln!("fd store restart: READY after {:?}", started.elapsed());
    drop(store.pop()); // our copy of the stray
    assert!(path.exists(), "the lease's dir was touched by the restart");
    stray_ours
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut &stray_ours, &mut byte).unwrap(),
        0,
        "stray fd not closed"
    );

    // The client did not notice; its release goes to the new daemon.
    assert!(probe.finish().success(), "release after the restart failed");
    assert!(
        eventually(Duration::from_secs(10), || !path.exists()),
        "released dir not deleted"
    );
    let log = std::fs::read_to_string(s.dir.join("daemon.log")).unwrap();
    assert!(
        log.contains("connection resumed from the fd store"),
        "{log}"
    );
    assert!(
        !log.contains("reclaimed"),
        "the client had to reclaim: {log}"
    );
    // The store entry went away with the lease.
    let seen = notify.collect_store(&mut store, Duration::from_millis(300));
    assert!(
        seen.iter()
            .any(|m| m.contains("FDSTOREREMOVE=1") && m.contains(&name)),
        "{seen:?}"
    );
    drop(daemon);
}

#[test]
fn without_the_fd_store_the_client_reclaims_its_lease_and_a_dead_clients_lease_expires() {
    if !require_root("reclaim_restart") {
        return;
    }
    let mut d = Daemon::start_with_config("reclaim", "reclaim_grace_secs = 3\n");
    let survivor = Probe::start(&d.socket, USER_A, "survivor");
    let mut dying = Probe::start(&d.socket, USER_A, "dying");
    let (kept_path, dead_path) = (survivor.path(), dying.path());
    assert!(d.terminate().success());
    dying.child.kill().unwrap();
    dying.child.wait().unwrap();
    d.spawn();
    // The survivor's lease reconnects by itself.
    assert!(
        eventually(Duration::from_secs(10), || d
            .log_text()
            .contains("reclaimed")),
        "{}",
        d.log_text()
    );
    assert!(kept_path.exists());
    // The dead client's lease waits out the grace period, then goes.
    assert!(dead_path.exists(), "released before its grace period");
    assert!(
        eventually(Duration::from_secs(10), || !dead_path.exists()),
        "not released after the grace period"
    );
    assert!(
        kept_path.exists(),
        "the reclaimed lease was released with the dead one"
    );
    // The reclaimed lease still works: release deletes it.
    assert!(survivor.finish().success());
    assert!(eventually(Duration::from_secs(10), || !kept_path.exists()));
}

#[test]
fn a_thousand_live_leases_survive_a_restart() {
    if !require_root("thousand_leases_restart") {
        return;
    }
    let limit = rustix::process::Rlimit {
        current: Some(16_384),
        maximum: Some(16_384),
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    let notify_dir = Scratch::new("thousand-notify");
    let notify = NotifySocket::bind(&notify_dir.dir.join("notify"));
    let mut d = Daemon::start_with(
        "thousand",
        DaemonOpts {
            // The reclaim path (no fd store), for 1000 leases at once.
            config: Some("max_connections_per_uid = 4096\nmax_leases_per_uid = 4096\nreclaim_grace_secs = 60\nfd_store = false\n".into()),
            env: vec![("NOTIFY_SOCKET".into(), notify_dir.dir.join("notify").to_string_lossy().into_owned())],
            ..Default::default()
        },
    );
    let _ = notify.wait_for("READY=1", Duration::from_secs(5));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = d.socket.clone();
    let leases = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..1000 {
            let c = builddir_client::Client::connect(&socket).await.unwrap();
            v.push(c.allocate(&format!("build-{i}")).await.unwrap());
        }
        v
    });
    assert!(d.terminate().success());
    let started = Instant::now();
    d.spawn();
    let (ready, _) = notify.wait_for("READY=1", Duration::from_secs(20));
    let to_ready = started.elapsed();
    assert!(ready);
    eprintln!("1000 leases: READY=1 {to_ready:?} after exec");
    assert!(
        eventually(Duration::from_secs(60), || d
            .log_text()
            .matches("reclaimed")
            .count()
            >= 1000),
        "only {} of 1000 reclaimed",
        d.log_text().matches("reclaimed").count()
    );
    for l in &leases {
        assert!(l.path_matches_dir(), "{} lost its dir", l.id());
    }
    let paths: Vec<_> = leases.iter().map(|l| l.path().to_owned()).collect();
    rt.block_on(async {
        for l in leases {
            l.release().await.unwrap();
        }
    });
    assert!(eventually(Duration::from_secs(30), || paths
        .iter()
        .all(|p| !p.exists())));
}

/// Kills the daemon at `point` during `op`, restarts it, and checks that
/// nothing is lost, nothing is left forever and nothing else is touched.
fn crash_at(
    point: &str,
    op: impl FnOnce(&Daemon) -> std::process::Child,
) -> std::process::ExitStatus {
    eprintln!("crash point {point}");
    let mut d = Daemon::start_with(
        "crash",
        DaemonOpts {
            config: Some("reclaim_grace_secs = 2\n".into()),
            env: vec![("BUILDDIR_FAILPOINT".into(), point.into())],
            ..Default::default()
        },
    );
    std::fs::create_dir(d.root.join("operator-notes")).unwrap();
    std::fs::write(d.root.join("operator-notes/keep-me"), "x").unwrap();
    let bystander = Probe::start(&d.socket, USER_A, "bystander");
    let mut client = op(&d);
    assert!(
        d.wait_exit(Duration::from_secs(10)),
        "{point}: failpoint not reached:\n{}",
        d.log_text()
    );
    let name = point.split('@').next().unwrap();
    assert!(
        d.log_text().contains("failpoint hit") && d.log_text().contains(name),
        "{point}:\n{}",
        d.log_text()
    );
    d.set_env(Vec::new());
    d.spawn();
    // The bystander reclaims its lease and keeps its dir.
    assert!(
        eventually(Duration::from_secs(10), || d
            .log_text()
            .matches("reclaimed")
            .count()
            >= 1),
        "{point}: bystander not reclaimed:\n{}",
        d.log_text()
    );
    // Everything else resolves: no half-made dirs, trash empties, and after
    // the grace period only the bystander is live.
    assert!(
        eventually(Duration::from_secs(15), || {
            let b = d.entries("b");
            let rows = d.list_all();
            d.entries("trash").is_empty()
                && b.iter().all(|n| !n.starts_with(".new"))
                && b.len() == rows.iter().filter(|r| r["state"] == "live").count()
                && d.entries("kept").len() == rows.iter().filter(|r| r["state"] == "kept").count()
                && rows.iter().filter(|r| r["state"] == "live").count() == 1
        }),
        "{point}: unresolved state: b={:?} kept={:?} trash={:?} rows={:?}\n{}",
        d.entries("b"),
        d.entries("kept"),
        d.entries("trash"),
        d.list_all(),
        d.log_text()
    );
    assert!(bystander.path().exists(), "{point}: bystander's dir lost");
    assert_eq!(
        std::fs::read_to_string(d.root.join("operator-notes/keep-me")).unwrap(),
        "x",
        "{point}"
    );
    assert!(
        bystander.finish().success(),
        "{point}: bystander cannot release"
    );
    wait_timeout(&mut client, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{point}: client hung"))
}

/// `builddir-ctl ARGS` as USER_A, not waited for: its daemon is about to die.
fn run_in_lease(d: &Daemon, args: &[&str]) -> std::process::Child {
    d.ctl_cmd(args)
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_each_step_of_allocate_release_keep_and_reap_resolves_on_restart() {
    if !require_root("failpoints") {
        return;
    }
    // `@2`: the bystander's allocation is the first. The client's
    // allocation fails with the daemon; what it half made is cleaned up.
    for point in [
        "allocate:after-mkdir@2",
        "allocate:before-rename@2",
        "allocate:after-rename@2",
    ] {
        let status = crash_at(point, |d| run_in_lease(d, &["run", "--", "true"]));
        assert!(
            !status.success(),
            "{point}: allocation cannot have succeeded"
        );
    }
    // Mid-release: the client reclaims its lease from the new daemon and
    // its release completes — no lease is lost.
    for point in ["release:after-chmod", "release:after-rename"] {
        let status = crash_at(point, |d| {
            run_in_lease(
                d,
                &[
                    "run",
                    "--",
                    "sh",
                    "-c",
                    "for i in $(seq 40); do : > f$i; done",
                ],
            )
        });
        assert!(
            status.success(),
            "{point}: the client's release did not complete after the restart"
        );
    }
    // Mid-reap: released already, so the client is done; the reap resumes.
    let status = crash_at("reap:mid-walk", |d| {
        run_in_lease(
            d,
            &[
                "run",
                "--",
                "sh",
                "-c",
                "for i in $(seq 40); do : > f$i; done",
            ],
        )
    });
    assert!(status.success());
    // Mid-keep: the tree is in kept/ (listed as kept after the restart).
    for point in ["keep:after-rename", "keep:before-hand-over"] {
        crash_at(point, |d| {
            run_in_lease(
                d,
                &[
                    "run",
                    "--keep-failed",
                    "--",
                    "sh",
                    "-c",
                    "echo x > f; false",
                ],
            )
        });
    }
}

use std::os::unix::process::CommandExt;

#[test]
fn list_offline_reads_the_registry_while_the_daemon_is_down() {
    if !require_root("list_offline") {
        return;
    }
    let mut d = Daemon::start("offline");
    let probe = Probe::start(&d.socket, USER_A, "offline-build");
    let kept = d.ctl(&[
        "run",
        "--keep-failed",
        "--name",
        "failed-one",
        "--",
        "false",
    ]);
    assert_eq!(kept.status.code(), Some(1));
    d.kill9();
    let cfg = d.scratch.dir.join("offline.toml");
    std::fs::write(&cfg, format!("root = {:?}\n", d.root)).unwrap();
    let out = Command::new(bin("builddir-ctl"))
        .args(["--json", "list", "--offline", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let find = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {rows:?}"))
    };
    assert_eq!(find("offline-build")["state"], "live");
    assert_eq!(find("offline-build")["owner_uid"], USER_A.uid);
    assert_eq!(find("offline-build")["id"], probe.id());
    assert_eq!(find("failed-one")["state"], "kept");
    let text = Command::new(bin("builddir-ctl"))
        .args(["list", "--offline", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("offline-build"));
    let _ = wait_timeout;
}
