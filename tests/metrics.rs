//! Every metric family `builddir-ctl metrics` prints moves when the event it
//! counts happens, read through the reference Prometheus parser. A family
//! added without a check here fails the test: a metric nobody saw move may
//! be one that lies.

use std::process::Command;
use std::time::Duration;

use builddir_tests::prom::{self, Parsed};
use builddir_tests::{eventually, require_root, Daemon, DaemonOpts, Probe, USER_A, USER_B};

fn metrics(d: &Daemon) -> Parsed {
    let out = d.ctl(&["metrics"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    prom::parse(&String::from_utf8(out.stdout).unwrap())
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_slice(&d.ctl(&["--json", "status"]).stdout).unwrap()
}

#[test]
fn every_metric_family_moves_when_its_event_happens() {
    if !require_root("every_metric_family_moves_when_its_event_happens") {
        return;
    }
    // A tmpfs of its own: free space and inodes change only by what this
    // test does, so the reaper's freed-bytes figure is exact.
    let d = Daemon::start_with(
        "metrics",
        DaemonOpts {
            backing: "tmpfs",
            ..Default::default()
        },
    );
    // The start-up probe's connection ends asynchronously: the baseline is
    // taken once only this call's own connection is open.
    let mut before = metrics(&d);
    assert!(
        eventually(Duration::from_secs(10), || {
            before = metrics(&d);
            before.get("builddird_connections") == 1.0
        }),
        "a connection other than this call's stays open: {before:?}"
    );
    std::thread::sleep(Duration::from_millis(1100)); // uptime has whole seconds

    // A live lease whose build writes 4 MiB in 100 files.
    let a = Probe::start(&d.socket, USER_A, "writer");
    let write = Command::new("/bin/sh")
        .args([
            "-c",
            "cd \"$1\" && dd if=/dev/zero of=big bs=1M count=4 status=none && for i in $(seq 99); do : > f$i; done",
            "sh",
        ])
        .arg(a.path())
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .status()
        .unwrap();
    assert!(write.success());
    // A kept tree.
    let kept = d.ctl(&["run", "--keep-failed", "--", "false"]);
    assert_eq!(kept.status.code(), Some(1));
    // A tree the reaper cannot finish: a mount point inside it.
    let b = Probe::start(&d.socket, USER_B, "with-a-mount");
    let src = d.scratch.dir.join("bind-src");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(b.path().join("spool")).unwrap();
    assert!(Command::new("mount")
        .arg("--bind")
        .arg(&src)
        .arg(b.path().join("spool"))
        .status()
        .unwrap()
        .success());
    // A refusal.
    assert_eq!(
        d.ctl(&["release", "0000000000000000"]).status.code(),
        Some(1)
    );
    // Short-lived connections (the kept run, the refused release) end
    // asynchronously: wait until only the probes' and this call's remain.
    let mut held = metrics(&d);
    eventually(Duration::from_secs(10), || {
        held = metrics(&d);
        held.get("builddird_connections") == before.get("builddird_connections") + 2.0
    });
    assert!(b.finish().success());
    assert!(
        eventually(Duration::from_secs(10), || status(&d)["leases"]
            ["quarantined"]
            == 1),
        "{}",
        d.log_text()
    );
    assert!(a.finish().success());
    assert!(
        eventually(Duration::from_secs(10), || status(&d)["leases"]["live"]
            == 0
            && status(&d)["reaped_total"].as_u64() >= Some(1)),
        "{}",
        d.log_text()
    );
    let after = metrics(&d);

    let delta = |m: &Parsed, k: &str| m.get(k) - before.get(k);
    let mut checked: Vec<&str> = Vec::new();
    let mut moved = |family: &'static str, ok: bool, what: String| {
        assert!(ok, "{family} did not move: {what}");
        checked.push(family);
    };
    moved(
        "builddird_leases",
        delta(&held, "builddird_leases{state=live}") == 2.0
            && delta(&after, "builddird_leases{state=kept}") == 1.0
            && delta(&after, "builddird_leases{state=quarantined}") == 1.0
            && after.get("builddird_leases{state=reaping}") == 0.0
            // Printed; it moves in `the_detaching_gauge_counts_a_held_tmpfs_lease`
            // (it needs the tmpfs lease backend, which would hide this
            // test's writes from the root's free space).
            // (`get` panics on a label not printed.)
            && after.get("builddird_leases{state=detaching}") == 0.0,
        format!("held {held:?}\nafter {after:?}"),
    );
    moved(
        "builddird_allocations",
        delta(&after, "builddird_allocations_total") == 3.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_releases",
        delta(&after, "builddird_releases_total") == 3.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_refusals",
        delta(&after, "builddird_refusals_total{reason=not-found}") == 1.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_connections_accepted",
        // The probes, the kept run, the refused release, `metrics` once.
        delta(&held, "builddird_connections_accepted_total") >= 5.0,
        format!("{held:?}"),
    );
    moved(
        "builddird_connections",
        // The two probes hold theirs, and so does the `metrics` call.
        delta(&held, "builddird_connections") == 2.0,
        format!("{held:?}"),
    );
    moved(
        "builddird_hand_overs_running",
        // Printed, and back to 0 once the kept run's hand-over ended (a
        // fraction of a millisecond here: too short to be sampled). It is
        // seen moving, and never past its cap, in
        // `keep_flood_from_many_uids_runs_at_most_the_cap_of_hand_overs_and_stalls_no_other_user`
        // (tests/adversarial.rs), whose hand-overs a failpoint makes last.
        held.get("builddird_hand_overs_running") == 0.0
            && after.get("builddird_hand_overs_running") == 0.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_reaped_trees",
        // The writer's tree, the kept run's `false` was kept, the mounted
        // one quarantined: exactly one.
        delta(&after, "builddird_reaped_trees_total") == 1.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_reaped_entries",
        delta(&after, "builddird_reaped_entries_total") >= 100.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_reaped_bytes",
        delta(&after, "builddird_reaped_bytes_total") >= 4.0 * 1024.0 * 1024.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_reap_errors",
        delta(&after, "builddird_reap_errors_total") >= 1.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_reap_duration_seconds",
        delta(&after, "builddird_reap_duration_seconds_count") == 2.0
            && delta(&after, "builddird_reap_duration_seconds_sum") > 0.0,
        format!("{after:?}"),
    );
    moved(
        "builddird_free_bytes",
        before.get("builddird_free_bytes") - held.get("builddird_free_bytes")
            >= 4.0 * 1024.0 * 1024.0,
        format!("{held:?}"),
    );
    moved(
        "builddird_free_inodes",
        before.get("builddird_free_inodes") - held.get("builddird_free_inodes") >= 100.0,
        format!("{held:?}"),
    );
    moved(
        "builddird_uptime_seconds",
        held.get("builddird_uptime_seconds") > before.get("builddird_uptime_seconds"),
        format!("{held:?}"),
    );

    let mut printed = after.families.clone();
    printed.sort();
    checked.sort();
    assert_eq!(
        printed, checked,
        "every family printed is checked here, and every family checked is printed"
    );
    // The mount point keeps its tree in quarantine; the scratch dir's
    // teardown unmounts it.
}

#[test]
fn the_detaching_gauge_counts_a_held_tmpfs_lease() {
    if !require_root("the_detaching_gauge_counts_a_held_tmpfs_lease") {
        return;
    }
    let d = Daemon::start_with(
        "metrics-detaching",
        DaemonOpts {
            config: Some("lease_backend = \"tmpfs\"\nlease_size_default = 8388608\n".into()),
            ..Default::default()
        },
    );
    let gauge = |m: &Parsed, state: &str| m.get(&format!("builddird_leases{{state={state}}}"));
    let before = metrics(&d);
    assert_eq!(gauge(&before, "detaching"), 0.0, "{before:?}");
    let p = Probe::start(&d.socket, USER_A, "held");
    // A leftover process of the build with a file of the lease's tmpfs
    // open (its stdin): the release deletes the tree, but the tmpfs still
    // holds that file, so it stays mounted and the lease detaching.
    std::fs::write(p.path().join("held"), b"x").unwrap();
    let mut holder = Command::new("/bin/sleep")
        .arg("60")
        .current_dir(p.path())
        .stdin(std::fs::File::open(p.path().join("held")).unwrap())
        .uid(USER_A.uid)
        .gid(USER_A.gid)
        .spawn()
        .unwrap();
    assert!(p.finish().success());
    let mut held = metrics(&d);
    let moved = eventually(Duration::from_secs(10), || {
        held = metrics(&d);
        gauge(&held, "detaching") == 1.0
    });
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(moved, "{held:?}\n{}", d.log_text());
    assert_eq!(
        (gauge(&held, "live"), gauge(&held, "reaping")),
        (0.0, 0.0),
        "{held:?}"
    );
    // The holder is gone, so is the tmpfs, and the lease with it.
    let mut after = metrics(&d);
    assert!(
        eventually(Duration::from_secs(10), || {
            after = metrics(&d);
            gauge(&after, "detaching") == 0.0
        }),
        "{after:?}\n{}",
        d.log_text()
    );
    assert_eq!(
        after.get("builddird_reaped_trees_total") - before.get("builddird_reaped_trees_total"),
        1.0,
        "{after:?}"
    );
}

use std::os::unix::process::CommandExt;
