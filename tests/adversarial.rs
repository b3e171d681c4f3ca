//! The adversarial suite: a hostile build attacks the reaper, the
//! allocation path, the protocol and the policy. Each test names its attack.
//! After every case the outside-world canary — a root-owned file and
//! directory outside the tree — must be byte-for-byte unchanged.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use builddir_proto::{codec, ErrorKind, Hello, HelloReply, Request, Response};
use builddir_tests::wire::{frame, raw, read_msg};
use builddir_tests::{
    bin_for_others, eventually, require_root, unmount_below, Daemon, DaemonOpts, Ident, Probe,
    USER_A, USER_B,
};

/// Root-owned files outside every tree, with known content, mode and owner.
struct Canary {
    dir: PathBuf,
    snapshot: Vec<(PathBuf, u32, u32, u32, Vec<u8>)>,
}

impl Canary {
    fn new(d: &Daemon) -> Canary {
        Canary::at(d.scratch.dir.join("canary"))
    }

    /// A canary at `dir` (on the daemon's mount when hard links must reach it).
    fn at(dir: PathBuf) -> Canary {
        std::fs::create_dir_all(dir.join("dir")).unwrap();
        std::fs::write(dir.join("file"), b"canary file: must never change\n").unwrap();
        std::fs::write(dir.join("dir/inner"), b"inner canary\n").unwrap();
        std::fs::set_permissions(dir.join("file"), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            dir.join("dir/inner"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(dir.join("dir"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = Canary {
            dir,
            snapshot: Vec::new(),
        };
        c.snapshot = c.take();
        c
    }

    fn take(&self) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
        ["file", "dir", "dir/inner"]
            .iter()
            .map(|p| {
                let path = self.dir.join(p);
                let m = std::fs::symlink_metadata(&path)
                    .unwrap_or_else(|e| panic!("canary {p} gone: {e}"));
                let content = if m.is_dir() {
                    let mut names: Vec<_> = std::fs::read_dir(&path)
                        .unwrap()
                        .map(|e| e.unwrap().file_name())
                        .collect();
                    names.sort();
                    format!("{names:?}").into_bytes()
                } else {
                    std::fs::read(&path).unwrap()
                };
                (path, m.mode(), m.uid(), m.gid(), content)
            })
            .collect()
    }

    fn assert_intact(&self, case: &str) {
        self.assert_unchanged(case);
        let nlink = std::fs::metadata(self.dir.join("file")).unwrap().nlink();
        assert_eq!(nlink, 1, "{case}: a hard link to the canary survived");
    }

    /// Content, mode and owner as they were. (A hard link from a tree not
    /// reaped yet may still exist: [`Canary::assert_intact`] checks that
    /// once the tree is gone.)
    fn assert_unchanged(&self, case: &str) {
        assert_eq!(self.take(), self.snapshot, "{case}: the canary changed");
    }
}

/// A running `bd-attack`.
struct Attack {
    child: Child,
    /// The attacker's stdout, read line by line (one reader for all lines:
    /// a second reader would lose what the first buffered).
    out: BufReader<std::process::ChildStdout>,
    id: String,
    path: PathBuf,
}

impl Attack {
    fn start(d: &Daemon, canary: &Canary, who: Ident, scenario: &str, n: u64, secs: f64) -> Attack {
        let mut child = builddir_tests::spawn_retrying(
            Command::new(bin_for_others("bd-attack"))
                .arg(&d.socket)
                .arg(scenario)
                .arg(&canary.dir)
                .arg(n.to_string())
                .arg(secs.to_string())
                .uid(who.uid)
                .gid(who.gid)
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{scenario} setup: {line:?} {e}"));
        Attack {
            child,
            out,
            id: v["id"].as_str().unwrap().to_owned(),
            path: PathBuf::from(v["path"].as_str().unwrap()),
        }
    }

    /// Releases the lease; the attacker keeps going through its fd.
    fn go(&mut self) {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
    }

    /// Sends one line to the attacker ("go", "keep").
    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }

    /// Reads the attacker's next JSON line.
    fn read_json(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("attacker said {line:?}: {e}"))
    }

    /// Waits for the attacker to finish; it must exit 0 (a SIGIO from a
    /// broken file lease would kill it).
    fn finish(mut self, case: &str) {
        let status = builddir_tests::wait_timeout(&mut self.child, Duration::from_secs(120))
            .expect("attacker finished");
        assert!(
            status.success(),
            "{case}: attacker failed or was killed: {status}"
        );
    }
}

/// Waits for trash to empty; if a tree stayed (quarantined), restarts the
/// daemon, whose start rescans trash, and waits again. It must end clean.
fn assert_eventually_clean(d: &mut Daemon, case: &str) {
    if !eventually(Duration::from_secs(30), || d.entries("trash").is_empty()) {
        d.terminate();
        unmount_below(&d.root.join("trash"));
        d.spawn();
        assert!(
            eventually(Duration::from_secs(60), || d.entries("trash").is_empty()),
            "{case}: trash not empty after restart: {:?}\n{}",
            d.entries("trash"),
            d.log_text()
        );
    }
    assert!(d.entries("b").is_empty(), "{case}: {:?}", d.entries("b"));
}

fn status_json(d: &Daemon) -> serde_json::Value {
    let out = d.ctl(&["--json", "status"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A daemon on a tmpfs-backed mount: the attacks that build millions of
/// names need a backing whose inode count is not the host disk's.
fn tmpfs_daemon(tag: &str) -> Daemon {
    Daemon::start_with(
        tag,
        DaemonOpts {
            backing: "tmpfs",
            ..Default::default()
        },
    )
}

/// Runs one attacker as `USER_A` from start to exit, with nothing between
/// the allocation and the attack (tests that act in between, or attack as
/// another user, drive [`Attack`] by hand).
fn run_attack(d: &Daemon, canary: &Canary, scenario: &str, n: u64, secs: f64, case: &str) {
    let mut attack = Attack::start(d, canary, USER_A, scenario, n, secs);
    attack.go();
    attack.finish(case);
}

/// Runs one tree attack from setup to a clean trash.
fn tree_attack(
    tag: &str,
    scenario: &str,
    n: u64,
    secs: f64,
    backing: &'static str,
) -> (Daemon, Canary) {
    let mut d = Daemon::start_with(
        tag,
        DaemonOpts {
            backing,
            ..Default::default()
        },
    );
    // On the daemon's own mount (outside every tree), so that hard links
    // from a lease can reach it.
    let canary = Canary::at(d.root.join("canary"));
    run_attack(&d, &canary, scenario, n, secs, scenario);
    // The reap may still run (under load it outlasts the attacker).
    canary.assert_unchanged(scenario);
    assert_eventually_clean(&mut d, scenario);
    canary.assert_intact(scenario);
    (d, canary)
}

#[test]
fn reaper_vs_a_dir_swapped_for_a_symlink_to_the_canary_in_a_tight_loop() {
    if !require_root("reaper_vs_symlink_swap") {
        return;
    }
    tree_attack("swap", "symlink-swap", 5000, 2.0, "bind");
}

#[test]
fn reaper_vs_absolute_dotdot_and_proc_symlinks() {
    if !require_root("reaper_vs_symlinks") {
        return;
    }
    let (d, _) = tree_attack("links", "symlinks", 0, 0.0, "bind");
    // The log line follows the deletion: wait for it.
    assert!(
        eventually(Duration::from_secs(5), || d.log_text().contains("reaped")),
        "{}",
        d.log_text()
    );
}

#[test]
fn reaper_vs_hard_links_to_a_root_owned_file() {
    if !require_root("reaper_vs_hard_links") {
        return;
    }
    // Allow unprivileged hard links to files one does not own, for this test.
    let _unprotected = builddir_tests::allow_unprotected_hardlinks();
    tree_attack("hard", "hardlinks", 0, 0.0, "bind");
}

#[test]
fn reaper_vs_unreadable_unsearchable_and_sticky_dirs_and_a_000_build_dir() {
    if !require_root("reaper_vs_modes") {
        return;
    }
    tree_attack("modes", "modes", 0, 0.0, "bind");
}

#[test]
fn reaper_vs_a_tree_100000_levels_deep_with_255_byte_names() {
    if !require_root("reaper_vs_deep_tree") {
        return;
    }
    let (d, _) = tree_attack("deep", "deep", 100_000, 0.0, "tmpfs");
    assert!(
        eventually(Duration::from_secs(5), || d
            .log_text()
            .contains("removed=100004")),
        "{}",
        d.log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn reaper_vs_one_directory_with_a_million_entries_while_others_allocate() {
    if !require_root("reaper_vs_wide_dir") {
        return;
    }
    let mut d = tmpfs_daemon("wide");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "wide", 1_000_000, 0.0);
    let rss_before = rss_kib(d.pid());
    attack.go();
    attack.finish("wide");
    // While the million entries are being reaped, an allocation is served fast.
    let mut slowest = Duration::ZERO;
    let mut during = 0;
    while !d.entries("trash").is_empty() {
        let t = Instant::now();
        let probe = Probe::start(&d.socket, USER_B, "concurrent");
        assert_eq!(probe.report["exec_ok"], true);
        slowest = slowest.max(t.elapsed());
        assert!(probe.finish().success());
        during += 1;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "allocation took {slowest:?} during the reap"
    );
    eprintln!("wide: {during} allocations served during the reap, slowest {slowest:?}");
    let rss_after = rss_kib(d.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    canary.assert_intact("wide");
    assert_eventually_clean(&mut d, "wide");
    assert!(
        eventually(Duration::from_secs(5), || d
            .log_text()
            .contains("removed=1000005")),
        "{}",
        d.log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn reaper_vs_names_with_newlines_invalid_utf8_and_leading_dashes() {
    if !require_root("reaper_vs_odd_names") {
        return;
    }
    tree_attack("names", "names", 0, 0.0, "bind");
}

#[test]
fn reaper_vs_a_bind_mount_inside_the_tree() {
    if !require_root("reaper_vs_bind_mount") {
        return;
    }
    let mut d = Daemon::start("bindin");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "hold", 0, 0.0);
    let spool = attack.path.join("spool");
    let id = attack.id.clone();
    let ok = Command::new("mount")
        .arg("--bind")
        .arg(canary.dir.join("dir"))
        .arg(&spool)
        .status()
        .unwrap();
    assert!(ok.success());
    attack.go();
    attack.finish("bind mount");
    // Not descended: the canary's inner file is still there, and the daemon
    // says why it could not finish.
    assert!(
        eventually(Duration::from_secs(10), || status_json(&d)["leases"]
            ["quarantined"]
            == 1),
        "{}",
        d.log_text()
    );
    canary.assert_intact("bind mount");
    let status = status_json(&d);
    let err = status["last_reap_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        err.contains("mount point") && err.contains("spool"),
        "{err}"
    );
    // The warning follows the state change: wait for it, do not race it.
    assert!(
        eventually(Duration::from_secs(5), || d
            .log_text()
            .contains("quarantine")),
        "{}",
        d.log_text()
    );
    let rows = d.list_all();
    assert_eq!(rows[0]["state"], "quarantined", "{rows:?}");
    assert_eq!(rows[0]["id"], id);
    // The operator unmounts; the next start finishes the job.
    assert_eventually_clean(&mut d, "bind mount");
    canary.assert_intact("bind mount");
}

#[test]
fn reaper_vs_fifos_sockets_and_a_file_under_an_f_setlease_lease() {
    if !require_root("reaper_vs_special_files") {
        return;
    }
    let mut d = Daemon::start("special");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "specials", 0, 3.0);
    let started = Instant::now();
    attack.go();
    // Reaped while the attacker still holds its lease and its socket.
    assert!(
        eventually(Duration::from_secs(3), || d.entries("trash").is_empty()),
        "{}",
        d.log_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the reap waited on a lease break"
    );
    attack.finish("specials");
    canary.assert_intact("specials");
    assert_eventually_clean(&mut d, "specials");
}

#[test]
fn reaper_vs_a_writer_that_keeps_refilling_the_tree() {
    if !require_root("reaper_vs_refilling_writer") {
        return;
    }
    let mut d = Daemon::start("refill");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "refill", 0, 6.0);
    attack.go();
    // Bounded: while the writer is still writing, the reap gives up (no
    // spinning) and the daemon answers promptly.
    let gave_up = eventually(Duration::from_secs(5), || {
        let s = status_json(&d);
        s["leases"]["reaping"] == 0
    });
    let t = Instant::now();
    let s = status_json(&d);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(gave_up, "reap still running under a refilling writer: {s}");
    attack.finish("refill");
    canary.assert_intact("refill");
    assert_eventually_clean(&mut d, "refill");
}

#[test]
fn chmod_777_of_the_build_dir_by_its_owner_does_not_open_it_to_others() {
    if !require_root("chmod_777_of_build_dir") {
        return;
    }
    let d = Daemon::start("c777");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "chmod777", 0, 0.0);
    let mode = std::fs::metadata(&attack.path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o777, "the owner's chmod took effect");
    for script in ["ls \"$1\"", "touch \"$1/x\"", "cd \"$1\" && echo inside"] {
        let out = Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .arg(&attack.path)
            .uid(USER_B.uid)
            .gid(USER_B.gid)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "uid {} reached a 777 build dir with {script}",
            USER_B.uid
        );
    }
    assert!(!attack.path.join("x").exists());
    attack.go();
    attack.finish("chmod777");
}

#[test]
fn protocol_one_byte_per_write_is_served() {
    if !require_root("protocol_one_byte_per_write") {
        return;
    }
    let d = Daemon::start("bytes");
    let mut s = raw(&d.socket);
    for b in frame(&codec::encode(&Hello::current("slow")).unwrap()) {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        read_msg::<HelloReply>(&mut s),
        Some(HelloReply::Welcome { .. })
    ));
    for b in frame(&codec::encode(&Request::Status).unwrap()) {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(matches!(
        read_msg::<Response>(&mut s),
        Some(Response::Status(_))
    ));
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn flood_past_the_connection_limits_is_refused_and_service_resumes() {
    if !require_root("flood_connection_limits") {
        return;
    }
    let d = Daemon::start_with(
        "flood",
        DaemonOpts {
            config: Some(
                "max_connections = 8\nmax_connections_per_uid = 6\nhandshake_timeout_secs = 2\n"
                    .into(),
            ),
            ..Default::default()
        },
    );
    // Seven silent connections from root: at most six take root's per-uid
    // slots (fewer while the start-up probe's connection is still being
    // closed); the rest are refused at once.
    std::thread::sleep(Duration::from_millis(300));
    let mut silent: Vec<_> = (0..7).map(|_| raw(&d.socket)).collect();
    std::thread::sleep(Duration::from_millis(700));
    let mut refused = Vec::new();
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        if let Some(HelloReply::Refused(e)) = read_msg::<HelloReply>(s) {
            refused.push(e);
        }
    }
    assert!(!refused.is_empty() && refused.len() <= 2, "{refused:?}");
    for e in &refused {
        assert_eq!(e.kind, ErrorKind::Busy);
        assert!(
            e.message.contains("max_connections_per_uid = 6"),
            "{}",
            e.message
        );
    }
    // Another uid still gets in (per-uid limit), up to the total.
    let probe = Probe::start(&d.socket, USER_A, "other-uid");
    assert_eq!(probe.report["exec_ok"], true);
    // Slow handshakes are cut off; then root is served again.
    assert!(eventually(Duration::from_secs(5), || d
        .ctl(&["status"])
        .status
        .success()));
    drop(silent);
    drop(probe);
}

#[test]
fn flood_under_rlimit_nofile_64_backs_off_without_spinning_and_recovers() {
    if !require_root("flood_rlimit_nofile") {
        return;
    }
    let d = Daemon::start("rlimit");
    let pid = d.pid().to_string();
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=64:64"])
        .status()
        .unwrap();
    assert!(ok.success(), "prlimit (util-linux) must be installed");
    // Hold more connections than the daemon has fds for, all mid-handshake.
    let mut held = Vec::new();
    for _ in 0..120 {
        match std::os::unix::net::UnixStream::connect(&d.socket) {
            Ok(s) => held.push(s),
            Err(_) => break, // backlog full: the kernel pushes back
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(d.pid()) - before;
    assert!(
        spent < 30,
        "accept loop spins under EMFILE: {spent} ticks in 1 s"
    );
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || d
            .ctl(&["status"])
            .status
            .success()),
        "service did not resume:\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("backing off"), "{}", d.log_text());
}

#[test]
fn release_racing_disconnect_and_double_release_never_delete_the_wrong_tree() {
    if !require_root("release_races") {
        return;
    }
    let d = Daemon::start("race");
    let bystanders: Vec<Probe> = (0..3)
        .map(|i| Probe::start(&d.socket, USER_B, &format!("bystander-{i}")))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..40 {
        rt.block_on(async {
            let lease = builddir_client::Client::connect(&d.socket)
                .await
                .unwrap()
                .allocate("racer")
                .await
                .unwrap();
            let id = lease.id().to_owned();
            let socket = d.socket.clone();
            // Release by id from a second connection while the holder drops.
            let other = tokio::spawn(async move {
                let mut c = builddir_client::Client::connect(&socket).await.unwrap();
                c.release(&id, false).await
            });
            drop(lease);
            let r = other.await.unwrap();
            if let Err(e) = r {
                assert_eq!(e.reply().map(|r| r.kind), Some(ErrorKind::NotFound), "{e}");
            }
        });
    }
    assert!(eventually(Duration::from_secs(10), || d
        .entries("trash")
        .is_empty()));
    for b in &bystanders {
        assert!(b.path().exists(), "bystander {} deleted", b.id());
    }
    let rows = d.list_all();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(!d.log_text().contains("release failed"), "{}", d.log_text());
    for b in bystanders {
        assert!(b.finish().success());
    }
}

#[test]
fn kill9_of_the_daemon_mid_reap_then_restart_finishes_the_reap() {
    if !require_root("kill9_mid_reap") {
        return;
    }
    let mut d = tmpfs_daemon("midreap");
    let canary = Canary::new(&d);
    std::fs::create_dir(d.root.join("operator-notes")).unwrap();
    std::fs::write(d.root.join("operator-notes/keep-me"), "x").unwrap();
    run_attack(&d, &canary, "wide", 400_000, 0.0, "mid-reap");
    // Kill it while the trash entry is being deleted.
    assert!(eventually(Duration::from_secs(5), || !d
        .entries("trash")
        .is_empty()));
    d.kill9();
    assert!(
        !d.entries("trash").is_empty(),
        "reap finished before the kill; make the tree bigger"
    );
    d.spawn();
    assert!(
        eventually(Duration::from_secs(60), || d.entries("trash").is_empty()),
        "{}",
        d.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(d.root.join("operator-notes/keep-me")).unwrap(),
        "x"
    );
    canary.assert_intact("mid-reap");
}

/// Allocated bytes below `top` (not counting `top`), as the size walk
/// counts them; the tree must hold no hard links.
fn du(top: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// `list --all --size --json` as root, timed.
fn sized_rows(d: &Daemon) -> (Vec<serde_json::Value>, Duration) {
    let t0 = Instant::now();
    let out = d.ctl(&["--json", "list", "--all", "--size"]);
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "list --size failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    (rows.as_array().cloned().unwrap(), took)
}

#[test]
fn size_walk_vs_a_subtree_moved_ahead_of_the_walker_on_every_open() {
    if !require_root("size_walk_vs_mover") {
        return;
    }
    let mut d = Daemon::start("mover-size");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "mover", 0, 0.0);
    let real = du(&attack.path);
    attack.send("arm");
    assert_eq!(attack.read_json()["armed"], true);
    let (rows, took) = sized_rows(&d);
    let row = rows
        .iter()
        .find(|r| r["id"] == attack.id.as_str())
        .expect("the attacker's lease is listed");
    // Never a size counted from the same inodes again and again: either the
    // walk saw the tree change and says "unknown", or it is a true size.
    if let Some(size) = row["size_bytes"].as_u64() {
        assert!(
            size <= real,
            "size walk counted {size} bytes for a tree of {real} (it re-walked the moved subtree)"
        );
    }
    // Within the walk's time bound (60 s), with room for a loaded machine.
    assert!(took < Duration::from_secs(75), "list --size took {took:?}");
    attack.send("go");
    let moves = attack.read_json()["moves"].as_u64().unwrap();
    eprintln!(
        "mover: {moves} moves; list --size took {took:?}; size {}",
        row["size_bytes"]
    );
    attack.finish("mover-size");
    canary.assert_intact("mover-size");
    assert_eventually_clean(&mut d, "mover-size");
}

#[test]
fn keep_vs_a_subtree_moved_ahead_of_the_hand_over_on_every_open() {
    if !require_root("keep_vs_mover") {
        return;
    }
    let mut d = Daemon::start("mover-keep");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "mover", 0, 0.0);
    let real = du(&attack.path);
    attack.send("arm");
    assert_eq!(attack.read_json()["armed"], true);
    let t0 = Instant::now();
    attack.send("keep");
    let answer = attack.read_json();
    let took = t0.elapsed();
    let moves = attack.read_json()["moves"].as_u64().unwrap();
    eprintln!("mover: {moves} moves; keep answered {answer} in {took:?}");
    assert!(took < Duration::from_secs(75), "keep took {took:?}");
    // Each walk enters the subtree once: the hand-over, and the reap that
    // may start before the attacker stops moving (one move each, plus one
    // for a walk that ran while the answer travelled).
    assert!(
        moves <= 3,
        "the subtree was walked {moves} times: the hand-over re-walked it after each move"
    );
    if let Some(message) = answer["keep_error"].as_str() {
        // Not handed over: the reply says why and the tree is deleted.
        assert!(
            message.contains("not kept") && message.contains("changed"),
            "{message}"
        );
        assert!(
            eventually(Duration::from_secs(30), || d.entries("kept").is_empty()),
            "a tree that was not handed over stayed in kept/: {:?}",
            d.entries("kept")
        );
    } else {
        // Handed over only if every entry was reached once: the size it
        // recorded is the tree's, not the moved subtree counted many times.
        assert!(answer["kept"].is_string(), "{answer}");
        let (rows, _) = sized_rows(&d);
        let row = rows
            .iter()
            .find(|r| r["id"] == attack.id.as_str())
            .expect("the kept tree is listed");
        let size = row["size_bytes"].as_u64().expect("a kept tree has a size");
        assert!(size <= real, "{size} bytes listed for a tree of {real}");
        d.ctl(&["gc", "--older-than", "0"]);
    }
    attack.finish("mover-keep");
    canary.assert_intact("mover-keep");
    assert_eventually_clean(&mut d, "mover-keep");
}

/// The path of the file at the bottom of a `deep-setuid` tree of `levels`.
fn deep_file(kept: &str, levels: u64) -> PathBuf {
    let mut p = PathBuf::from(kept);
    for _ in 0..levels {
        p.push("d");
    }
    p.join("suid")
}

#[test]
fn keep_vs_a_setuid_binary_301_levels_deep_clears_it() {
    if !require_root("keep_vs_deep_setuid") {
        return;
    }
    let d = Daemon::start("deep-suid");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "deep-setuid", 301, 0.0);
    attack.send("keep");
    let answer = attack.read_json();
    let kept = answer["kept"]
        .as_str()
        .unwrap_or_else(|| panic!("a 301-level tree is within the walk's bounds: {answer}"));
    let mode = std::fs::symlink_metadata(deep_file(kept, 301))
        .expect("the deep file is in the kept tree")
        .mode();
    assert_eq!(
        mode & 0o6000,
        0,
        "setuid/setgid bits survived the hand-over at depth 301: {mode:o}"
    );
    attack.finish("deep-suid");
    canary.assert_intact("deep-suid");
}

#[test]
fn keep_vs_a_tree_deeper_than_the_walk_bound_is_refused_and_deleted() {
    if !require_root("keep_vs_too_deep") {
        return;
    }
    let mut d = Daemon::start("too-deep");
    let canary = Canary::new(&d);
    // The hand-over walk goes 4096 levels deep at most.
    let mut attack = Attack::start(&d, &canary, USER_A, "deep-setuid", 4200, 0.0);
    attack.send("keep");
    let answer = attack.read_json();
    let message = answer["keep_error"]
        .as_str()
        .unwrap_or_else(|| panic!("a tree past the depth bound was kept: {answer}"));
    assert!(
        message.contains("not kept") && message.contains("deeper"),
        "{message}"
    );
    assert!(
        eventually(Duration::from_secs(30), || d.entries("kept").is_empty()),
        "the refused tree stayed in kept/: {:?}",
        d.entries("kept")
    );
    attack.finish("too-deep");
    canary.assert_intact("too-deep");
    assert_eventually_clean(&mut d, "too-deep");
}

#[test]
fn reaper_vs_ancestors_moved_in_a_tight_loop_finishes_without_quarantine() {
    if !require_root("reaper_vs_moved_ancestors") {
        return;
    }
    let d = Daemon::start("moved-anc");
    let canary = Canary::new(&d);
    run_attack(&d, &canary, "move-ancestors", 8, 3.0, "move-ancestors");
    // No restart: the daemon itself must finish the reap.
    assert!(
        eventually(Duration::from_secs(60), || d.entries("trash").is_empty()),
        "trash not empty: {:?}\n{}",
        d.entries("trash"),
        d.log_text()
    );
    assert!(
        !d.log_text().contains("quarantine"),
        "a moved ancestor quarantined the tree:\n{}",
        d.log_text()
    );
    assert!(
        eventually(Duration::from_secs(5), || d.log_text().contains("reaped")),
        "{}",
        d.log_text()
    );
    canary.assert_intact("move-ancestors");
}

#[test]
fn list_and_log_vs_a_forged_command_name_and_a_field_forging_lease_name() {
    if !require_root("list_vs_forged_comm") {
        return;
    }
    let d = Daemon::start("comm");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "comm", 0, 0.0);
    // JSON is exact.
    let rows = d.list_all();
    let row = rows
        .iter()
        .find(|r| r["id"] == attack.id.as_str())
        .expect("listed");
    assert_eq!(row["client_command"], "\u{1b}[2J\nFAKE ROW");
    assert_eq!(row["name"], "x path=/etc/shadow uid=0");
    // The table escapes: no terminal control reaches the operator, no row
    // is forged.
    let out = d.ctl(&["list", "--all"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\u{1b}'), "raw ESC in list output: {text:?}");
    assert_eq!(text.lines().count(), 2, "a row was forged: {text:?}");
    assert!(!text.lines().any(|l| l.starts_with("FAKE ROW")), "{text:?}");
    assert!(text.contains(r"\u{1b}[2J\nFAKE ROW"), "{text:?}");
    // The log quotes the name: no `path=` field can be forged.
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("allocated") && l.contains(attack.id.as_str()))
        .unwrap_or_else(|| panic!("no allocated line:\n{log}"));
    assert!(
        line.contains(r#"name="x path=/etc/shadow uid=0""#),
        "name not quoted: {line}"
    );
    attack.go();
    attack.finish("comm");
    canary.assert_intact("comm");
}

#[test]
fn reclaim_guessing_is_rate_limited_per_uid_and_logged_once_per_window() {
    if !require_root("reclaim_guessing") {
        return;
    }
    let d = Daemon::start("reclaim-guess");
    let mut s = raw(&d.socket);
    builddir_tests::wire::hello(&mut s);
    let mut kinds = Vec::new();
    for i in 0..50 {
        let request = Request::Reclaim {
            id: "00000000deadbeef".into(),
            secret: format!("guess-{i}"),
        };
        s.write_all(&frame(&codec::encode(&request).unwrap()))
            .unwrap();
        match read_msg::<Response>(&mut s) {
            Some(Response::Error(e)) => kinds.push(e.kind),
            other => panic!("guess {i}: {other:?}"),
        }
    }
    // Ten wrong guesses a minute, then refused without being checked.
    assert!(
        kinds[..10].iter().all(|k| *k == ErrorKind::NotFound),
        "{kinds:?}"
    );
    assert!(
        kinds[10..].iter().all(|k| *k == ErrorKind::Busy),
        "{kinds:?}"
    );
    // One log line for the window, not one per guess.
    let log = d.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("reclaim"))
        .count();
    assert_eq!(lines, 1, "{log}");
    // Others are still served.
    assert!(d.ctl(&["status"]).status.success());
}

#[test]
fn retention_vs_one_users_many_keeps_never_evicts_another_users_tree() {
    if !require_root("retention_per_owner") {
        return;
    }
    let d = Daemon::start_with_config("retention-owner", "kept_max_count = 2\n");
    let canary = Canary::new(&d);
    let keep = |who: Ident| {
        let mut attack = Attack::start(&d, &canary, who, "hold", 0, 0.0);
        attack.send("keep");
        let answer = attack.read_json();
        let kept = PathBuf::from(
            answer["kept"]
                .as_str()
                .unwrap_or_else(|| panic!("keep failed: {answer}")),
        );
        attack.finish("retention-owner");
        kept
    };
    // The victim's tree is the oldest of all.
    let victims = keep(USER_B);
    let mine: Vec<PathBuf> = (0..4).map(|_| keep(USER_A)).collect();
    assert!(
        eventually(Duration::from_secs(10), || !mine[0].exists()
            && !mine[1].exists()),
        "the attacker's own oldest trees were not evicted"
    );
    assert!(mine[2].exists() && mine[3].exists());
    assert!(
        victims.exists(),
        "another user's keeps evicted the victim's tree:\n{}",
        d.log_text()
    );
}

#[test]
fn a_quarantined_tree_counts_against_its_user_until_an_operator_retries_it() {
    if !require_root("quarantine_counts") {
        return;
    }
    let d = Daemon::start_with_config("quarantine-counts", "max_leases_per_uid = 1\n");
    let canary = Canary::new(&d);
    let mut attack = Attack::start(&d, &canary, USER_A, "hold", 0, 0.0);
    let spool = attack.path.join("spool");
    let id = attack.id.clone();
    assert!(Command::new("mount")
        .arg("--bind")
        .arg(canary.dir.join("dir"))
        .arg(&spool)
        .status()
        .unwrap()
        .success());
    attack.go();
    attack.finish("quarantine-counts");
    assert!(
        eventually(Duration::from_secs(10), || status_json(&d)["leases"]
            ["quarantined"]
            == 1),
        "{}",
        d.log_text()
    );
    // The tree that cannot be deleted still takes its user's only place.
    let refused = Probe::start(&d.socket, USER_A, "next");
    assert_eq!(
        refused.report["kind"], "quota-exceeded",
        "{}",
        refused.report
    );
    drop(refused);
    // Another user's status does not show this user's reap error (it names
    // the lease and files in its tree); an operator's does.
    let out = d
        .ctl_cmd(&["--json", "status"])
        .uid(USER_B.uid)
        .gid(USER_B.gid)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(theirs["last_reap_error"].is_null(), "{theirs}");
    assert!(status_json(&d)["last_reap_error"].is_string());
    // The operator clears the cause and retries, without a restart.
    unmount_below(&d.root.join("trash"));
    let out = d.ctl(&["remove", &id]);
    assert!(
        out.status.success(),
        "remove of a quarantined tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(30), || d.entries("trash").is_empty()),
        "trash: {:?}\n{}",
        d.entries("trash"),
        d.log_text()
    );
    let again = Probe::start(&d.socket, USER_A, "again");
    assert_eq!(again.report["exec_ok"], true, "{}", again.report);
    canary.assert_intact("quarantine-counts");
}

#[test]
fn size_walk_flood_from_one_uid_neither_exhausts_fds_nor_stalls_another_users_allocations() {
    if !require_root("size_walk_flood") {
        return;
    }
    let d = Daemon::start("walk-flood");
    let canary = Canary::new(&d);
    // 250 levels over 20 000 files: a walk that keeps one fd per level
    // holds 250 fds while it reads the bottom.
    let mut attack = Attack::start(&d, &canary, USER_A, "deep-wide", 250, 0.0);
    let fds_before = d.fd_count();
    // The daemon's fds, sampled all along the flood.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, fd_dir) = (stop.clone(), format!("/proc/{}/fd", d.pid()));
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(dir) = std::fs::read_dir(&fd_dir) {
                    most = most.max(dir.count());
                }
            }
            most
        })
    };
    let flood: Vec<Child> = (0..48)
        .map(|_| {
            d.ctl_cmd(&["--json", "list", "--size"])
                .uid(USER_A.uid)
                .gid(USER_A.gid)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..10 {
        let t0 = Instant::now();
        let p = Probe::start(&d.socket, USER_B, &format!("bystander-{i}"));
        let took = t0.elapsed();
        assert_eq!(p.report["exec_ok"], true, "bystander {i}: {}", p.report);
        assert!(
            took < Duration::from_secs(10),
            "bystander {i} took {took:?}"
        );
    }
    for mut c in flood {
        let status = builddir_tests::wait_timeout(&mut c, Duration::from_secs(120))
            .expect("a size listing ended");
        assert!(status.success(), "list --size failed: {status}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most_fds = sampler.join().unwrap();
    // Four walks of at most 16 fds each, plus connections: nowhere near
    // 48 walks × 250 levels.
    eprintln!("daemon fds: {fds_before} before, at most {most_fds} during the flood");
    assert!(
        most_fds < fds_before + 48 + 200,
        "the size walks held {most_fds} fds (before: {fds_before})"
    );
    attack.go();
    attack.finish("walk-flood");
    canary.assert_intact("walk-flood");
}

#[test]
fn a_tmpfs_lease_held_open_after_release_stays_counted_until_its_tmpfs_is_gone() {
    if !require_root("tmpfs_held_after_release") {
        return;
    }
    let d = Daemon::start_with(
        "tmpfs-held",
        DaemonOpts {
            config: Some(
                "lease_backend = \"tmpfs\"\nlease_size_default = 8388608\nmax_leases_per_uid = 1\n"
                    .into(),
            ),
            ..Default::default()
        },
    );
    let canary = Canary::new(&d);
    // The build keeps a file open in its tmpfs for 8 s after the release
    // (time for the checks below, under load, while it is held).
    let mut attack = Attack::start(&d, &canary, USER_A, "pin", 0, 8.0);
    let id = attack.id.clone();
    attack.go();
    let state_of = |d: &Daemon| {
        d.list_all()
            .into_iter()
            .find(|r| r["id"] == id.as_str())
            .map(|r| r["state"].as_str().unwrap_or("?").to_owned())
    };
    // Released, its tree deleted, but the tmpfs is alive: listed as
    // detaching, counted in `status`, and still its user's only place.
    assert!(
        eventually(Duration::from_secs(4), || state_of(&d).as_deref()
            == Some("detaching")),
        "a tmpfs lease held open is not listed as detaching: {:?}\n{}",
        state_of(&d),
        d.log_text()
    );
    let held = status_json(&d);
    assert_eq!(
        (&held["leases"]["detaching"], &held["leases"]["reaping"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{held}"
    );
    assert_held_in_trash(&d, &id);
    let refused = Probe::start(&d.socket, USER_A, "next");
    assert_eq!(
        refused.report["kind"], "quota-exceeded",
        "{}",
        refused.report
    );
    drop(refused);
    assert_eq!(
        state_of(&d).as_deref(),
        Some("detaching"),
        "the holder still runs: the lease must still be detaching\n{}",
        d.log_text()
    );
    attack.finish("tmpfs-held");
    // The holder is gone: so is the tmpfs, and the lease with it.
    assert!(
        eventually(Duration::from_secs(10), || state_of(&d).is_none()),
        "still listed as {:?} after its holder exited\n{}",
        state_of(&d),
        d.log_text()
    );
    assert_eq!(status_json(&d)["leases"]["detaching"], 0);
    assert_nothing_held_left(&d);
    let again = Probe::start(&d.socket, USER_A, "again");
    assert_eq!(again.report["exec_ok"], true, "{}", again.report);
    canary.assert_intact("tmpfs-held");
}

/// A held lease tmpfs as it must be: still mounted in trash beside its
/// record (what a restarted daemon finds), the tree inside deleted, its
/// root closed (root's, mode 0000).
fn assert_held_in_trash(d: &Daemon, id: &str) {
    let outer = d.root.join("trash").join(id);
    let build = outer.join("build");
    assert!(
        outer.join("lease.json").exists(),
        "no record beside the held tmpfs: {:?}",
        d.entries("trash")
    );
    assert!(
        builddir_tests::unmount_below_exists(&build),
        "the held tmpfs is not mounted in trash\n{}",
        d.log_text()
    );
    let left: Vec<_> = std::fs::read_dir(&build).unwrap().collect();
    assert!(left.is_empty(), "its tree is not deleted: {left:?}");
    let m = std::fs::metadata(&build).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o7777),
        (0, 0),
        "its root is not closed"
    );
}

/// No lease tmpfs left mounted in trash, and trash empty.
fn assert_nothing_held_left(d: &Daemon) {
    assert!(
        eventually(Duration::from_secs(5), || d.entries("trash").is_empty()),
        "trash not empty: {:?}",
        d.entries("trash")
    );
    assert!(
        !builddir_tests::unmount_below_exists(&d.root.join("trash")),
        "a lease tmpfs is still mounted in trash"
    );
}

/// How often the daemon checks a held tmpfs (`lease::detaching::CHECK_EVERY`).
const HELD_CHECK_EVERY: Duration = Duration::from_secs(1);

#[test]
fn a_tmpfs_lease_held_across_a_daemon_restart_stays_listed_and_counted_until_its_holder_exits() {
    if !require_root("tmpfs_held_across_restart") {
        return;
    }
    const MIB: u64 = 1 << 20;
    // One 8 MiB lease fits under the 12 MiB total; a second does not.
    let mut d = Daemon::start_with(
        "tmpfs-held-restart",
        DaemonOpts {
            config: Some(format!(
                "lease_backend = \"tmpfs\"\nlease_size_default = {}\nmax_leases_per_uid = 1\ntmpfs_leases_max_total = {}\n",
                8 * MIB,
                12 * MIB
            )),
            ..Default::default()
        },
    );
    let canary = Canary::new(&d);
    // The build keeps a file open in its tmpfs after the release, until
    // it is killed below (it would hold it for 10 minutes).
    let mut attack = Attack::start(&d, &canary, USER_A, "pin", 0, 600.0);
    let id = attack.id.clone();
    attack.go();
    let state_of = |d: &Daemon| {
        d.list_all()
            .into_iter()
            .find(|r| r["id"] == id.as_str())
            .map(|r| r["state"].as_str().unwrap_or("?").to_owned())
    };
    assert!(
        eventually(Duration::from_secs(4), || state_of(&d).as_deref()
            == Some("detaching")),
        "a tmpfs lease held open is not listed as detaching: {:?}\n{}",
        state_of(&d),
        d.log_text()
    );
    assert_held_in_trash(&d, &id);
    // A restart: the held tmpfs is in no table of the daemon's memory any
    // more, only in trash, mounted beside its record.
    d.terminate();
    assert!(
        d.root_is_mounted(),
        "the root was unmounted under a held lease tmpfs\n{}",
        d.log_text()
    );
    assert_held_in_trash(&d, &id);
    d.spawn();
    // Listed as detaching from the start, counted in `status`...
    assert_eq!(
        state_of(&d).as_deref(),
        Some("detaching"),
        "a held tmpfs lease forgotten by the restart\n{}",
        d.log_text()
    );
    let held = status_json(&d);
    assert_eq!(held["leases"]["detaching"], 1, "{held}");
    // ...against its user's lease limit...
    let mine = Probe::start(&d.socket, USER_A, "mine");
    assert_eq!(mine.report["kind"], "quota-exceeded", "{}", mine.report);
    drop(mine);
    // ...and with its size against the total: 8 + 8 MiB > 12 MiB.
    let other = Probe::start(&d.socket, USER_B, "other");
    assert_eq!(other.report["kind"], "no-space", "{}", other.report);
    assert!(
        other.report["error"]
            .as_str()
            .unwrap_or("")
            .contains("tmpfs_leases_max_total"),
        "{}",
        other.report
    );
    drop(other);
    assert_eq!(state_of(&d).as_deref(), Some("detaching"));
    // The holder exits: the next check finds the tmpfs empty, and the
    // lease is gone within the check's period (plus its final reap).
    let _ = attack.child.kill();
    let _ = attack.child.wait();
    let exited = Instant::now();
    assert!(
        eventually(2 * HELD_CHECK_EVERY + Duration::from_secs(2), || state_of(
            &d
        )
        .is_none()),
        "still listed as {:?} {:?} after its holder exited\n{}",
        state_of(&d),
        exited.elapsed(),
        d.log_text()
    );
    eprintln!(
        "held lease gone {:?} after its holder exited",
        exited.elapsed()
    );
    assert_eq!(status_json(&d)["leases"]["detaching"], 0);
    assert_nothing_held_left(&d);
    let again = Probe::start(&d.socket, USER_B, "again");
    assert_eq!(again.report["exec_ok"], true, "{}", again.report);
    canary.assert_intact("tmpfs-held-restart");
}

/// Spawns `sh -c SCRIPT` as `who` in `cwd`, stdin and stdout piped.
fn shell_as(who: Ident, cwd: &std::path::Path, script: &str) -> Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(who.uid)
        .gid(who.gid)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn read_line(out: &mut BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

#[test]
fn a_tmpfs_held_from_another_mount_namespace_stays_counted_across_a_restart() {
    if !require_root("tmpfs_held_from_another_mount_namespace") {
        return;
    }
    let mut d = Daemon::start_with_config(
        "tmpfs-held-ns",
        "lease_backend = \"tmpfs\"\nlease_size_default = 8388608\nmax_leases_per_uid = 1\n",
    );
    let lease = Probe::start(&d.socket, USER_A, "ns");
    let id = lease.id();
    // The build moves into a mount namespace of its own (a user namespace
    // makes that unprivileged) and keeps a file open there. Its copy of
    // the lease's mount is not the daemon's: the daemon's unmount would
    // not be busy, and would leave the tmpfs alive where it cannot see it.
    let mut holder = shell_as(
        USER_A,
        &lease.path(),
        "exec unshare --user --map-root-user --mount sh -c 'echo x > pinned && exec 3<pinned && echo ready && read line; exit 0'",
    );
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let ready = read_line(&mut out);
    if ready != "ready" {
        let _ = holder.kill();
        let _ = holder.wait();
        eprintln!("SKIPPED: tmpfs_held_from_another_mount_namespace: unshare --user --mount fails on this host (no unprivileged user namespaces), so no build can do this");
        return;
    }
    assert!(lease.finish().success());
    let state_of = |d: &Daemon| {
        d.list_all()
            .into_iter()
            .find(|r| r["id"] == id.as_str())
            .map(|r| r["state"].as_str().unwrap_or("?").to_owned())
    };
    assert!(
        eventually(Duration::from_secs(4), || state_of(&d).as_deref()
            == Some("detaching")),
        "a tmpfs held from another mount namespace is {:?}, not detaching\n{}",
        state_of(&d),
        d.log_text()
    );
    assert_held_in_trash(&d, &id);
    d.terminate();
    d.spawn();
    assert_eq!(
        state_of(&d).as_deref(),
        Some("detaching"),
        "{}",
        d.log_text()
    );
    let mine = Probe::start(&d.socket, USER_A, "mine");
    assert_eq!(mine.report["kind"], "quota-exceeded", "{}", mine.report);
    drop(mine);
    // The holder lets go: gone within the check's period.
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(
        eventually(2 * HELD_CHECK_EVERY + Duration::from_secs(2), || state_of(
            &d
        )
        .is_none()),
        "still {:?} after its holder exited\n{}",
        state_of(&d),
        d.log_text()
    );
    assert_nothing_held_left(&d);
}

#[test]
fn a_process_left_at_the_root_of_a_released_tmpfs_can_neither_write_there_nor_keep_it_counted() {
    if !require_root("tmpfs_left_at_its_root") {
        return;
    }
    let d = Daemon::start_with_config(
        "tmpfs-left-at-root",
        "lease_backend = \"tmpfs\"\nlease_size_default = 8388608\nmax_leases_per_uid = 1\n",
    );
    let lease = Probe::start(&d.socket, USER_A, "root-cwd");
    let id = lease.id();
    // A leftover process of the build whose working directory is the
    // root of the lease's tmpfs; after the release it tries to use it.
    let mut holder = shell_as(
        USER_A,
        &lease.path(),
        "echo x > file && echo ready && read line; \
         (echo y > new) 2>/dev/null && echo wrote || echo denied; \
         (mkdir d) 2>/dev/null && echo made || echo denied; \
         (ls .) >/dev/null 2>&1 && echo listed || echo denied; \
         (cd ..) 2>/dev/null && echo escaped || echo denied",
    );
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    assert_eq!(read_line(&mut out), "ready");
    assert!(lease.finish().success());
    // Its tree is deleted, its root closed: nothing it holds can use
    // memory, so the lease ends (its empty tmpfs detached) at once.
    assert!(
        eventually(Duration::from_secs(4), || !d
            .list_all()
            .iter()
            .any(|r| r["id"] == id.as_str())),
        "a lease whose tmpfs holds nothing is still listed\n{}",
        d.log_text()
    );
    assert_nothing_held_left(&d);
    holder.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let answers: Vec<String> = (0..4).map(|_| read_line(&mut out)).collect();
    assert_eq!(answers, ["denied"; 4], "the holder used its old cwd");
    assert!(holder.wait().unwrap().success());
    let again = Probe::start(&d.socket, USER_A, "again");
    assert_eq!(again.report["exec_ok"], true, "{}", again.report);
}

#[test]
fn sigterm_during_the_reap_of_a_huge_tree_stops_the_daemon_promptly_and_the_restart_finishes() {
    if !require_root("sigterm_mid_reap") {
        return;
    }
    let mut d = tmpfs_daemon("stop-mid-reap");
    let canary = Canary::new(&d);
    run_attack(&d, &canary, "wide", 2_000_000, 0.0, "stop-mid-reap");
    // The reap of two million names runs on a blocking thread...
    assert!(
        eventually(Duration::from_secs(10), || d
            .log_text()
            .contains("released")),
        "{}",
        d.log_text()
    );
    assert!(
        !d.entries("trash").is_empty(),
        "the reap ended before the stop; nothing to show"
    );
    // ...and does not hold up the stop (systemd's stop timeout would kill
    // the daemon; a stop that waits for the reap is seconds long).
    let t0 = Instant::now();
    let status = d.terminate();
    let took = t0.elapsed();
    eprintln!("stopped in {took:?} ({status})");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    // Trash is rescanned at start: the tree is finished then.
    d.spawn();
    assert!(
        eventually(Duration::from_secs(120), || d.entries("trash").is_empty()),
        "trash not empty after the restart: {:?}",
        d.entries("trash")
    );
    canary.assert_intact("stop-mid-reap");
}

/// One hand-over event in the daemon's log: its uid, and for a start the
/// number running then (itself included).
#[derive(Debug, Clone, Copy)]
enum HandOverEvent {
    Started { uid: u32, running: u64 },
    Walked { uid: u32 },
}

/// The hand-over events in `log`, in order.
fn hand_over_events(log: &str) -> Vec<HandOverEvent> {
    let field = |line: &str, key: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    log.lines()
        .filter_map(|l| {
            let uid = u32::try_from(field(l, "uid")?).ok()?;
            if l.contains("kept tree hand-over started") {
                Some(HandOverEvent::Started {
                    uid,
                    running: field(l, "running")?,
                })
            } else if l.contains("kept tree hand-over walked") {
                Some(HandOverEvent::Walked { uid })
            } else {
                None
            }
        })
        .collect()
}

/// `builddird_hand_overs_running` now, read from `builddir-ctl metrics`.
fn hand_overs_gauge(socket: &std::path::Path) -> Option<u64> {
    let out = Command::new(builddir_tests::bin("builddir-ctl"))
        .arg("--socket")
        .arg(socket)
        .arg("metrics")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("builddird_hand_overs_running ")?
            .parse()
            .ok()
    })
}

#[test]
fn keep_flood_from_many_uids_runs_at_most_the_cap_of_hand_overs_and_stalls_no_other_user() {
    if !require_root("keep_flood_from_many_uids") {
        return;
    }
    const CAP: u64 = 4; // the default `hand_over_concurrency`
    const UIDS: u32 = 8;
    const KEEPS_PER_UID: usize = 2;
    const KEEPS: usize = UIDS as usize * KEEPS_PER_UID;
    // Every hand-over lasts 1.5 s at least (a failpoint sleeps in it, on
    // its blocking thread), so without a cap all eight uids' first
    // hand-overs would run at once.
    let d = Daemon::start_with(
        "keep-flood",
        DaemonOpts {
            env: vec![(
                "BUILDDIR_FAILPOINT".into(),
                "keep:before-hand-over@*=sleep-ms:1500".into(),
            )],
            ..Default::default()
        },
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, socket) = (stop.clone(), d.socket.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(hand_overs_gauge(&socket).unwrap_or(0));
            }
            most
        })
    };
    let keepers: Vec<(u32, Child)> = (0..UIDS)
        .flat_map(|i| std::iter::repeat_n(61_101 + i, KEEPS_PER_UID))
        .map(|uid| {
            let child = d
                .ctl_cmd(&["run", "--keep-failed", "--", "false"])
                .uid(uid)
                .gid(uid)
                .current_dir("/")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (uid, child)
        })
        .collect();
    let started = |d: &Daemon| {
        hand_over_events(&d.log_text())
            .iter()
            .filter(|e| matches!(e, HandOverEvent::Started { .. }))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(30), || started(&d) >= CAP as usize),
        "the hand-overs did not start:\n{}",
        d.log_text()
    );
    // Meanwhile another user allocates, promptly: allocations need no
    // hand-over place and no blocking thread the hand-overs hold.
    let t0 = Instant::now();
    let bystander = Probe::start(
        &d.socket,
        Ident {
            uid: 61_120,
            gid: 61_120,
        },
        "bystander",
    );
    let took = t0.elapsed();
    assert_eq!(bystander.report["exec_ok"], true, "{}", bystander.report);
    let walked = |d: &Daemon| {
        hand_over_events(&d.log_text())
            .iter()
            .filter(|e| matches!(e, HandOverEvent::Walked { .. }))
            .count()
    };
    assert!(
        walked(&d) < KEEPS,
        "every hand-over was over before the bystander was answered: not meanwhile"
    );
    assert!(
        took < Duration::from_secs(3),
        "another user's allocation took {took:?} during the keep flood"
    );
    assert!(bystander.finish().success());
    for (uid, mut child) in keepers {
        let status = builddir_tests::wait_timeout(&mut child, Duration::from_secs(120))
            .expect("a keep was answered");
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        // `false`'s own status, and the tree kept.
        assert_eq!(status.code(), Some(1), "uid {uid}: {err}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most_sampled = sampler.join().unwrap();
    let kept = d
        .list_all()
        .into_iter()
        .filter(|r| r["state"] == "kept")
        .count();
    assert_eq!(kept, KEEPS, "{}", d.log_text());

    let events = hand_over_events(&d.log_text());
    let most = events
        .iter()
        .filter_map(|e| match e {
            HandOverEvent::Started { running, .. } => Some(*running),
            HandOverEvent::Walked { .. } => None,
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "hand-overs at once: at most {most} (log), {most_sampled} (gauge samples); cap {CAP}"
    );
    assert!(
        most <= CAP && most_sampled <= CAP,
        "{most} hand-overs ran at once (gauge: {most_sampled}), past the cap of {CAP}"
    );
    assert_eq!(
        most, CAP,
        "the flood never filled the cap: the test proves nothing"
    );
    // Each uid's hand-overs one after the other: started, walked, started…
    for uid in 61_101..61_101 + UIDS {
        let mine: Vec<bool> = events
            .iter()
            .filter_map(|e| match *e {
                HandOverEvent::Started { uid: u, .. } if u == uid => Some(true),
                HandOverEvent::Walked { uid: u } if u == uid => Some(false),
                _ => None,
            })
            .collect();
        assert_eq!(
            mine,
            [true, false].repeat(KEEPS_PER_UID),
            "uid {uid}'s hand-overs overlapped"
        );
    }
    assert_eq!(hand_overs_gauge(&d.socket), Some(0), "the gauge went back");
}
