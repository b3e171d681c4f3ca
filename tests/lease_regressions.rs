//! Each lease ends exactly once, in the state its user asked for, whatever
//! the client, the build or the daemon does meanwhile. One test per way the
//! lifecycle used to leak or misplace a lease, each named after what it
//! guarantees, each run against the real daemon on a real mount.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use builddir_proto::{codec, Request, Response};
use builddir_tests::activation::{start_activated, start_activated_env};
use builddir_tests::wire::{frame, hello, raw, read_msg};
use builddir_tests::{eventually, require_root, Daemon, DaemonOpts, Ident, Probe, USER_A};

/// A build user sharing USER_A's group (Nix's build users share `nixbld`).
const SAME_GROUP: Ident = Ident {
    uid: 61_003,
    gid: USER_A.gid,
};

const GRANTS: &str =
    "[[owner_grants]]\nusers = [\"61001\"]\nuids = [\"61100-61110\"]\ngids = [\"61100\"]\n";

fn send(s: &mut std::os::unix::net::UnixStream, r: &Request) {
    s.write_all(&frame(&codec::encode(r).unwrap())).unwrap();
}

/// A raw connection past the handshake: these tests speak the protocol by
/// hand so that they can stop, stall or misbehave between any two messages.
fn welcomed(socket: &std::path::Path) -> std::os::unix::net::UnixStream {
    let mut s = raw(socket);
    assert!(matches!(
        hello(&mut s),
        builddir_proto::HelloReply::Welcome { .. }
    ));
    s
}

/// Asks for a lease named `name` on `s` and reads the answer.
fn allocate_on(s: &mut std::os::unix::net::UnixStream, name: &str) -> Option<Response> {
    send(
        s,
        &Request::Allocate {
            name: name.into(),
            owner: None,
            limit: None,
        },
    );
    read_msg::<Response>(s)
}

fn live_rows(d: &Daemon) -> usize {
    d.list_all().iter().filter(|r| r["state"] == "live").count()
}

/// A request that once panicked the connection's task (`gc` with an age
/// beyond the epoch) is answered, and the lease the connection held ends
/// when the connection does.
#[test]
fn a_huge_gc_age_is_answered_and_the_connections_lease_still_ends_with_it() {
    if !require_root("a_huge_gc_age_is_answered_and_the_connections_lease_still_ends_with_it") {
        return;
    }
    let d = Daemon::start("panic-release");
    let mut s = welcomed(&d.socket);
    let Some(Response::Allocated(a)) = allocate_on(&mut s, "held") else {
        panic!("allocation failed:\n{}", d.log_text());
    };
    send(
        &mut s,
        &Request::Gc {
            older_than_secs: u64::MAX,
        },
    );
    let answer = read_msg::<Response>(&mut s);
    assert!(
        matches!(&answer, Some(Response::Collected { ids }) if ids.is_empty()),
        "gc --older-than u64::MAX must be answered (nothing is that old), got {answer:?}:\n{}",
        d.log_text()
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&a.path)
            .exists()
            && live_rows(&d) == 0),
        "lease {} outlived its connection: {:?}\n{}",
        a.id,
        d.list_all(),
        d.log_text()
    );
}

/// After a keep hands the tree to the requester, the build uid has no rights
/// over it: it does not see it, cannot gc it, cannot remove it.
#[test]
fn a_kept_tree_belongs_to_the_requester_alone() {
    if !require_root("a_kept_tree_belongs_to_the_requester_alone") {
        return;
    }
    let d = Daemon::start_with_config("kept-owner", GRANTS);
    let build_user = Ident {
        uid: 61_105,
        gid: 61_100,
    };
    let lease = builddir_client::blocking::Client::connect(&d.socket)
        .unwrap()
        .allocate_for(
            "kept-by-root",
            builddir_client::Owner {
                uid: build_user.uid,
                gid: build_user.gid,
            },
        )
        .unwrap();
    let id = lease.id().to_owned();
    let kept = lease.keep().unwrap();
    let as_build = |args: &[&str]| {
        d.ctl_cmd(args)
            .uid(build_user.uid)
            .gid(build_user.gid)
            .output()
            .unwrap()
    };
    let listed = as_build(&["--json", "list"]);
    assert!(listed.status.success(), "{listed:?}");
    let rows: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        rows.as_array().unwrap().len(),
        0,
        "the build uid still sees the kept tree: {rows}"
    );
    let gc = as_build(&["gc"]);
    assert!(gc.status.success(), "{gc:?}");
    let release = as_build(&["release", &id]);
    assert!(!release.status.success(), "{release:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(kept.exists(), "the build uid deleted a tree handed to root");
    let rows = d.list_all();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["owner_uid"], 0, "{rows:?}");
    assert_eq!(rows[0]["state"], "kept", "{rows:?}");
}

/// A daemon killed in the middle of a hand-over finishes it at the next
/// start; a kept tree's name and age survive restarts.
#[test]
fn an_interrupted_hand_over_is_finished_at_start_and_kept_trees_keep_name_and_age() {
    if !require_root(
        "an_interrupted_hand_over_is_finished_at_start_and_kept_trees_keep_name_and_age",
    ) {
        return;
    }
    let mut d = Daemon::start_with(
        "hand-over-resume",
        DaemonOpts {
            config: Some(GRANTS.into()),
            env: vec![("BUILDDIR_FAILPOINT".into(), "keep:before-hand-over".into())],
            ..Default::default()
        },
    );
    let lease = builddir_client::blocking::Client::connect(&d.socket)
        .unwrap()
        .allocate_for(
            "interrupted",
            builddir_client::Owner {
                uid: 61_105,
                gid: 61_100,
            },
        )
        .unwrap();
    let id = lease.id().to_owned();
    let build = Command::new("/bin/sh")
        .arg("-c")
        .arg("set -e; cd \"$1\"; cp /bin/true suid-bin; chmod 4755 suid-bin; echo log > log")
        .arg("sh")
        .arg(lease.path())
        .uid(61_105)
        .gid(61_100)
        .output()
        .unwrap();
    assert!(build.status.success(), "{build:?}");
    let created = d.list_all()[0]["created_unix"].as_u64().unwrap();
    // The daemon dies at the failpoint. The client would wait to reclaim
    // its lease from the next daemon; it is not waited for.
    let _client = std::thread::spawn(move || lease.keep());
    assert!(d.wait_exit(Duration::from_secs(10)), "{}", d.log_text());
    d.set_env(Vec::new());
    d.spawn();
    let kept = d.root.join("kept").join(&id).join("build");
    let meta = |p: &str| std::fs::symlink_metadata(kept.join(p)).unwrap();
    assert_eq!(
        (meta("suid-bin").uid(), meta("suid-bin").mode() & 0o7777),
        (0, 0o755),
        "hand-over not resumed:\n{}",
        d.log_text()
    );
    assert_eq!(meta("log").uid(), 0);
    assert_eq!(meta(".").uid(), 0);
    let check_row = |d: &Daemon| {
        let rows = d.list_all();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["state"], "kept", "{rows:?}");
        assert_eq!(rows[0]["name"], "interrupted", "{rows:?}");
        assert_eq!(rows[0]["owner_uid"], 0, "{rows:?}");
        assert_eq!(
            rows[0]["created_unix"].as_u64().unwrap(),
            created,
            "a kept tree's age restarted: {rows:?}"
        );
    };
    check_row(&d);
    // Once more, to be sure the record on disk is the handed-over one.
    d.terminate();
    std::thread::sleep(Duration::from_millis(1100));
    d.spawn();
    check_row(&d);
}

/// Only the owner can traverse the outer directory: another build user of
/// the same group cannot reach a build dir its build opened with `chmod 777`.
#[test]
fn a_build_dir_opened_to_all_stays_closed_to_other_members_of_the_owners_group() {
    if !require_root("a_build_dir_opened_to_all_stays_closed_to_other_members_of_the_owners_group")
    {
        return;
    }
    let d = Daemon::start("shared-group");
    let probe = Probe::start(&d.socket, USER_A, "open-to-all");
    let path = probe.path();
    let opened = Command::new("chmod")
        .arg("0777")
        .arg(&path)
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    assert!(opened.status.success(), "{opened:?}");
    let intruder = Command::new("/bin/sh")
        .args(["-c", "echo x > \"$1/planted\"", "sh"])
        .arg(&path)
        .uid(SAME_GROUP.uid)
        .gid(SAME_GROUP.gid)
        .output()
        .unwrap();
    assert!(
        !intruder.status.success() && !path.join("planted").exists(),
        "uid {} of the owner's group wrote into {path:?}",
        SAME_GROUP.uid
    );
    // The owner still gets in by path.
    let owner = Command::new("/bin/sh")
        .args(["-c", "echo x > \"$1/mine\"", "sh"])
        .arg(&path)
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    assert!(owner.status.success(), "{owner:?}");
    let outer = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!((outer.uid(), outer.gid()), (0, 0), "outer dir owner");
    assert_eq!(
        outer.mode() & 0o007,
        0,
        "others have rights on the outer dir"
    );
    assert!(probe.finish().success());
}

/// Concurrent allocations never get past `max_leases` or
/// `max_leases_per_uid`: the check and the count are one step.
#[test]
fn concurrent_allocations_never_exceed_the_lease_limits() {
    if !require_root("concurrent_allocations_never_exceed_the_lease_limits") {
        return;
    }
    for (key, limit) in [("max_leases", 3usize), ("max_leases_per_uid", 2)] {
        let d = Daemon::start_with_config("lease-limit-race", &format!("{key} = {limit}\n"));
        for _round in 0..8 {
            let clients = 32;
            let start = Arc::new(Barrier::new(clients));
            let threads: Vec<_> = (0..clients)
                .map(|_| {
                    let socket = d.socket.clone();
                    let start = start.clone();
                    std::thread::spawn(move || {
                        let client = builddir_client::blocking::Client::connect(&socket);
                        start.wait();
                        client.and_then(|c| c.allocate("race")).ok()
                    })
                })
                .collect();
            let held: Vec<_> = threads
                .into_iter()
                .filter_map(|t| t.join().unwrap())
                .collect();
            assert!(
                held.len() <= limit,
                "{key} = {limit}, but {} allocations succeeded",
                held.len()
            );
            assert!(!held.is_empty(), "no allocation succeeded");
            assert!(live_rows(&d) <= limit, "{:?}", d.list_all());
            drop(held);
            // Released trees count against the limits until they are
            // deleted: wait until they are gone, not only not live.
            assert!(
                eventually(Duration::from_secs(10), || d.list_all().is_empty()),
                "{:?}",
                d.list_all()
            );
        }
    }
}

/// A kept tree's outer directory is traversable by the requester only.
#[test]
fn a_kept_tree_is_reachable_by_its_requester_only() {
    if !require_root("a_kept_tree_is_reachable_by_its_requester_only") {
        return;
    }
    let d = Daemon::start("kept-reach");
    let out = d
        .ctl_cmd(&[
            "run",
            "--keep-failed",
            "--",
            "sh",
            "-c",
            "chmod 777 .; exit 3",
        ])
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let kept = String::from_utf8_lossy(&out.stderr)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let try_write = |who: Ident| {
        Command::new("/bin/sh")
            .args(["-c", "echo x > \"$1/planted\"", "sh"])
            .arg(&kept)
            .uid(who.uid)
            .gid(who.gid)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(!try_write(SAME_GROUP), "a group member wrote into {kept}");
    assert!(try_write(USER_A), "the requester cannot reach {kept}");
    let _ = std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o700));
}

/// A connection handed back by systemd that the new daemon cannot serve
/// (here: over the per-uid connection limit) does not pin its lease: the
/// lease waits to be reclaimed and ends with the grace period.
#[test]
fn a_stored_connection_the_new_daemon_cannot_serve_does_not_pin_its_lease() {
    if !require_root("a_stored_connection_the_new_daemon_cannot_serve_does_not_pin_its_lease") {
        return;
    }
    let s = builddir_tests::Scratch::new("resume-refused");
    let notify = builddir_tests::activation::NotifySocket::bind(&s.dir.join("notify"));
    let sock = s.dir.join("bd.sock");
    let listener = builddir_tests::activation::listen(&sock);
    let mut store = Vec::new();
    let daemon = start_activated(
        &s,
        "reclaim_grace_secs = 2\nmax_connections_per_uid = 4\n",
        &listener,
        &store,
        &notify,
    );
    let first = Probe::start(&sock, USER_A, "first");
    let second = Probe::start(&sock, USER_A, "second");
    let paths = [first.path(), second.path()];
    let _ = notify.collect_store(&mut store, Duration::from_millis(500));
    assert!(
        store
            .iter()
            .filter(|(n, _)| n.starts_with("lease-"))
            .count()
            >= 2,
        "{store:?}"
    );
    // Restart with room for one connection of this uid.
    drop(daemon);
    let _daemon = start_activated(
        &s,
        "reclaim_grace_secs = 2\nmax_connections_per_uid = 1\n",
        &listener,
        &store,
        &notify,
    );
    drop(store);
    let log = || std::fs::read_to_string(s.dir.join("daemon.log")).unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(20), || {
            paths.iter().filter(|p| p.exists()).count() == 1
        }),
        "both leases still exist after the grace period: the refused connection pins one\n{}",
        log()
    );
    drop((first, second));
}

/// A release whose move into trash fails leaves the lease live and still
/// bound to its connection: the connection's end still releases it.
#[test]
fn a_failed_release_leaves_the_lease_bound_to_its_connection() {
    if !require_root("a_failed_release_leaves_the_lease_bound_to_its_connection") {
        return;
    }
    let d = Daemon::start("failed-release");
    let mut s = welcomed(&d.socket);
    let Some(Response::Allocated(a)) = allocate_on(&mut s, "stuck") else {
        panic!("allocation failed:\n{}", d.log_text());
    };
    // An immutable trash: the rename into it fails (EPERM).
    let trash = d.root.join("trash");
    let chattr = |flag: &str| {
        let out = Command::new("chattr").arg(flag).arg(&trash).output();
        match out {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "chattr {flag} {trash:?} failed ({other:?}); this test needs chattr (e2fsprogs) and a root on ext4/XFS"
            ),
        }
    };
    chattr("+i");
    send(
        &mut s,
        &Request::Release {
            id: a.id.clone(),
            keep: false,
        },
    );
    let answer = read_msg::<Response>(&mut s);
    chattr("-i");
    assert!(
        matches!(&answer, Some(Response::Error(e)) if e.kind == builddir_proto::ErrorKind::Internal),
        "{answer:?}"
    );
    assert_eq!(live_rows(&d), 1);
    let outer = std::path::Path::new(&a.path).parent().unwrap();
    assert_eq!(
        std::fs::metadata(outer).unwrap().mode() & 0o777,
        0o710,
        "a lease that stays live must stay open to its owner"
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&a.path)
            .exists()
            && live_rows(&d) == 0),
        "the lease outlived its connection after a failed release: {:?}\n{}",
        d.list_all(),
        d.log_text()
    );
}

/// A kept tree's age counts from when it was kept, across restarts: on a
/// host that restarts more often than `kept_max_age_secs`, retention by age
/// still removes old kept trees.
#[test]
fn retention_by_age_survives_restarts() {
    if !require_root("retention_by_age_survives_restarts") {
        return;
    }
    let mut d = Daemon::start_with_config("kept-age", "kept_max_age_secs = 3\n");
    let out = d
        .ctl_cmd(&["run", "--keep-failed", "--", "false"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let kept = String::from_utf8_lossy(&out.stderr)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(std::path::Path::new(&kept).exists(), "{kept}");
    d.terminate();
    std::thread::sleep(Duration::from_secs(4));
    d.spawn();
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&kept)
            .exists()),
        "a kept tree older than kept_max_age_secs survived a restart: {:?}\n{}",
        d.list_all(),
        d.log_text()
    );
}

/// A `list --size` whose size walk fails (here: panics) is answered with a
/// typed error, not an empty list that reads as "you have no leases", and
/// the daemon goes on serving, this connection and others.
#[test]
fn a_failed_size_walk_is_an_error_reply_and_the_daemon_serves_on() {
    if !require_root("a_failed_size_walk_is_an_error_reply_and_the_daemon_serves_on") {
        return;
    }
    let d = Daemon::start_with(
        "size-walk-panic",
        DaemonOpts {
            env: vec![("BUILDDIR_FAILPOINT".into(), "list:size-walk=panic".into())],
            ..Default::default()
        },
    );
    let mut s = welcomed(&d.socket);
    let Some(Response::Allocated(_held)) = allocate_on(&mut s, "sized") else {
        panic!("allocation failed:\n{}", d.log_text());
    };
    send(
        &mut s,
        &Request::List {
            all: false,
            size: true,
        },
    );
    let answer = read_msg::<Response>(&mut s);
    match &answer {
        Some(Response::Error(e)) => {
            assert_eq!(e.kind, builddir_proto::ErrorKind::Internal, "{e:?}");
            assert!(e.message.contains("without --size"), "{e:?}");
        }
        other => panic!(
            "a failed size walk must be an error reply, got {other:?}:\n{}",
            d.log_text()
        ),
    }
    assert!(
        d.log_text().contains("failpoint hit"),
        "the failpoint did not fire:\n{}",
        d.log_text()
    );
    // The same connection is still served, and so is a new one.
    assert!(
        matches!(allocate_on(&mut s, "after"), Some(Response::Allocated(_))),
        "{}",
        d.log_text()
    );
    let other = builddir_client::blocking::Client::connect(&d.socket)
        .unwrap()
        .allocate("other-conn")
        .unwrap_or_else(|e| panic!("a new connection is not served ({e}):\n{}", d.log_text()));
    send(
        &mut s,
        &Request::List {
            all: false,
            size: false,
        },
    );
    let listed = read_msg::<Response>(&mut s);
    let mut live: Vec<String> = match &listed {
        Some(Response::Leases(rows)) => rows
            .iter()
            .filter(|r| r.state == builddir_proto::LeaseState::Live)
            .map(|r| r.name.clone())
            .collect(),
        other => panic!("list failed after the failed walk: {other:?}"),
    };
    live.sort();
    assert_eq!(live, ["after", "other-conn", "sized"], "{listed:?}");
    drop(other);
}

/// Storing a lease's connection with systemd (a blocking `sendmsg` to
/// `NOTIFY_SOCKET`) that stalls holds up no other client: with a single
/// async worker, allocations on another connection all complete before the
/// stalled store reaches the notify socket. Done on an async worker, the
/// stall would hold every connection until the store went through.
#[test]
fn a_stalled_fd_store_send_does_not_stall_other_allocations() {
    if !require_root("a_stalled_fd_store_send_does_not_stall_other_allocations") {
        return;
    }
    const STALL_MS: u64 = 3000;
    const OTHERS: usize = 5;
    let s = builddir_tests::Scratch::new("fdstore-stall");
    let notify = builddir_tests::activation::NotifySocket::bind(&s.dir.join("notify"));
    let sock = s.dir.join("bd.sock");
    let listener = builddir_tests::activation::listen(&sock);
    let stall = format!("fdstore:send=sleep-ms:{STALL_MS}");
    let _daemon = start_activated_env(
        &s,
        "",
        &listener,
        &[],
        &notify,
        // One worker: anything blocking on it blocks every connection.
        &[
            ("BUILDDIR_FAILPOINT", stall.as_str()),
            ("TOKIO_WORKER_THREADS", "1"),
        ],
    );
    let log = || std::fs::read_to_string(s.dir.join("daemon.log")).unwrap_or_default();

    // The first store (this lease's connection) stalls.
    let mut stalled = welcomed(&sock);
    let Some(Response::Allocated(first)) = allocate_on(&mut stalled, "stalled") else {
        panic!("allocation failed:\n{}", log());
    };
    let replied = std::time::Instant::now();
    let first_name = format!("FDNAME=lease-{}", first.id);

    // Watch for the stalled store's datagram meanwhile.
    let watcher = std::thread::spawn(move || {
        let deadline = replied + Duration::from_millis(STALL_MS) * 4;
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            if let Ok(n) = notify.sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.lines().any(|l| l == first_name) {
                    return Some(std::time::Instant::now());
                }
            }
        }
        None
    });

    let mut other = welcomed(&sock);
    for i in 0..OTHERS {
        let answer = allocate_on(&mut other, &format!("other-{i}"));
        assert!(
            matches!(answer, Some(Response::Allocated(_))),
            "{answer:?}\n{}",
            log()
        );
    }
    let others_done = std::time::Instant::now();

    let stored = watcher
        .join()
        .unwrap()
        .unwrap_or_else(|| panic!("the stalled store never arrived:\n{}", log()));
    assert!(
        log().contains("failpoint hit"),
        "the failpoint did not fire:\n{}",
        log()
    );
    // The stall really happened (else the ordering below proves nothing).
    assert!(
        stored.duration_since(replied) >= Duration::from_millis(STALL_MS - 200),
        "the store arrived {:?} after the reply; the failpoint did not stall it",
        stored.duration_since(replied)
    );
    assert!(
        others_done < stored,
        "{OTHERS} allocations on another connection took {:?}, finishing {:?} after the \
         stalled store ended: the store blocked them",
        others_done.duration_since(replied),
        others_done.duration_since(stored)
    );
    drop((stalled, other));
}
