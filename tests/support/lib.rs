//! Test support: run the real `builddird` on a real mount in a unique
//! directory, and clean everything up (daemon, mounts, files) on drop.
//!
//! These tests need root (mounts, chown, other uids). Without root they
//! fail loudly — unless `BUILDDIR_TESTS_ALLOW_SKIP=1`, in which case each
//! prints `SKIPPED: <test>: <why>` and returns. CI runs them as root.

#![allow(unsafe_code)] // one pre_exec dup2 for socket activation; see `activation`

pub mod activation;
pub mod prom;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Returns true if and only if the test may go on (we are root). Otherwise
/// panics with the reason, or prints a loud skip line when skipping is
/// explicitly allowed.
pub fn require_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    let why = "needs root: it mounts, chowns and switches uids (CI runs it as root)";
    if std::env::var_os("BUILDDIR_TESTS_ALLOW_SKIP").is_some() {
        eprintln!("SKIPPED: {test}: {why}");
        false
    } else {
        panic!("{test} {why}; run as root or set BUILDDIR_TESTS_ALLOW_SKIP=1 to skip loudly");
    }
}

/// Path of a workspace binary built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built; run `cargo build --workspace --bins` before `cargo test --workspace`",
        path.display()
    );
    path
}

/// Path of a workspace binary that a test runs as another uid: a copy in
/// [`base_dir`] (`/var/tmp/builddird-tests/bin/…`, every component 0755), so
/// that uid can reach it even when the checkout or `target/` sits under a
/// directory only root may traverse (a 0700 `/root`). Root-owned and not
/// writable by others, so the other uid cannot swap it. The copy is named
/// after the source file's inode and mtime: it is made once per build and
/// shared by every test process (written under a temporary name, then
/// renamed into place, so concurrent suites never see half a file).
pub fn bin_for_others(name: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    // One copy at a time within this process; other processes use their
    // own temporary names.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let src = bin(name);
    let meta = std::fs::metadata(&src).expect("stat binary");
    // The file keeps its name (the daemon lists a client by its command
    // name); the directory names the build of it.
    let dir = base_dir().join("bin").join(format!(
        "{name}-{:x}-{:x}.{}",
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    ));
    std::fs::create_dir_all(&dir).expect("create the shared bin dir");
    for d in [base_dir(), base_dir().join("bin"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let dst = dir.join(name);
    if std::fs::metadata(&dst).is_ok_and(|m| m.len() == meta.len()) {
        return dst;
    }
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::copy(&src, &tmp).expect("copy binary for other uids");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &dst).expect("publish binary copy");
    dst
}

/// Spawns `cmd`, retrying while exec fails with `ETXTBSY`: a binary just
/// copied by [`bin_for_others`] can be "busy" for a moment because another
/// test thread forked while the copy's write descriptor was open (the
/// child holds it until its own exec).
pub fn spawn_retrying(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Base directory for test state. Not under /tmp: the seed test hides /tmp
/// behind a noexec tmpfs.
pub fn base_dir() -> PathBuf {
    std::env::var_os("BUILDDIR_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/builddird-tests"))
}

/// A fresh, unique, root-owned scratch directory (removed on drop).
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = base_dir().join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(base_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
pub fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    pub backing: &'static str,
    pub extra_args: Vec<String>,
    pub config: Option<String>,
    /// Extra environment (e.g. `BUILDDIR_FAILPOINT`).
    pub env: Vec<(String, String)>,
}

impl Default for DaemonOpts {
    fn default() -> DaemonOpts {
        DaemonOpts {
            backing: "bind",
            extra_args: Vec::new(),
            config: None,
            env: Vec::new(),
        }
    }
}

/// A running `builddird` with its own root and socket.
#[derive(Debug)]
pub struct Daemon {
    pub scratch: Scratch,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
    opts: DaemonOpts,
}

impl Daemon {
    /// Starts a daemon and waits until its socket answers.
    pub fn start(tag: &str) -> Daemon {
        Daemon::start_with(tag, DaemonOpts::default())
    }

    pub fn start_with(tag: &str, opts: DaemonOpts) -> Daemon {
        let mut d = Daemon::prepare(tag, opts);
        d.spawn();
        d
    }

    /// A daemon that differs from the default only in its config file, the
    /// most common variation by far.
    pub fn start_with_config(tag: &str, config: &str) -> Daemon {
        Daemon::start_with(
            tag,
            DaemonOpts {
                config: Some(config.into()),
                ..Default::default()
            },
        )
    }

    /// A daemon with its scratch dir made but not started, so a test can
    /// set up `root` first (mount a filesystem there); then [`Daemon::spawn`].
    pub fn prepare(tag: &str, opts: DaemonOpts) -> Daemon {
        let scratch = Scratch::new(tag);
        let root = scratch.dir.join("root");
        let socket = scratch.dir.join("bd.sock");
        let log = scratch.dir.join("daemon.log");
        Daemon {
            scratch,
            root,
            socket,
            child: None,
            log,
            opts,
        }
    }

    /// The command line this daemon runs with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("builddird"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--backing")
            .arg(self.opts.backing)
            .arg("--log-level")
            .arg("debug")
            .args(&self.opts.extra_args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(text) = &self.opts.config {
            let path = self.scratch.dir.join("config.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        } else {
            cmd.arg("--config")
                .arg(self.scratch.dir.join("no-config.toml"));
            std::fs::write(self.scratch.dir.join("no-config.toml"), "").unwrap();
        }
        cmd
    }

    /// Replaces the environment used by the next [`Daemon::spawn`].
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.opts.env = env;
    }

    /// Waits for the process to exit by itself (a failpoint); returns
    /// whether it did within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Replaces the configuration used by the next [`Daemon::spawn`].
    pub fn set_config(&mut self, text: &str) {
        self.opts.config = Some(text.to_owned());
    }

    /// (Re)starts the process and waits for the socket to answer.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn builddird");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Serving means a handshake succeeds (the socket listens before
            // the mount is ready; connecting alone proves nothing).
            if let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if matches!(
                    wire::hello(&mut s),
                    builddir_proto::HelloReply::Welcome { .. }
                ) {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("builddird exited early ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "builddird did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap the process (no cleanup by the daemon).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        wait_timeout(&mut c, Duration::from_secs(10)).expect("builddird did not stop on SIGTERM")
    }

    /// SIGINT (Ctrl-C in a terminal) and wait; returns the exit status.
    pub fn interrupt(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        wait_timeout(&mut c, Duration::from_secs(10)).expect("builddird did not stop on SIGINT")
    }

    /// Returns true if and only if `root` itself is a mount point now.
    pub fn root_is_mounted(&self) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.to_string_lossy();
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(root.as_ref()))
    }

    /// Number of open fds of the daemon process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Runs `builddir-ctl --socket S ARGS…` as root.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_cmd(args).output().expect("run builddir-ctl")
    }

    pub fn ctl_cmd(&self, args: &[&str]) -> Command {
        // Tests run it as other uids too (`.uid(..)` on the returned command).
        let mut cmd = Command::new(bin_for_others("builddir-ctl"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// `list --all --json` as root, parsed.
    pub fn list_all(&self) -> Vec<serde_json::Value> {
        let out = self.ctl(&["--json", "list", "--all"]);
        assert!(
            out.status.success(),
            "list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .expect("list --json parses")
            .as_array()
            .cloned()
            .expect("an array")
    }

    /// Entries under `root/<area>` (b, kept, trash).
    pub fn entries(&self, area: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join(area))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for `child` up to `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An unprivileged identity for tests: a uid/gid that no account uses.
#[derive(Debug, Clone, Copy)]
pub struct Ident {
    pub uid: u32,
    pub gid: u32,
}

pub const USER_A: Ident = Ident {
    uid: 61_001,
    gid: 61_001,
};
pub const USER_B: Ident = Ident {
    uid: 61_002,
    gid: 61_002,
};

/// A probe process holding a lease as `who`.
#[derive(Debug)]
pub struct Probe {
    pub child: Child,
    pub report: serde_json::Value,
}

impl Probe {
    /// Starts `bd-probe` as `who` and reads its JSON report.
    pub fn start(socket: &Path, who: Ident, name: &str) -> Probe {
        Probe::start_with(socket, who, name, &[])
    }

    /// Like [`Probe::start`], with extra arguments (an owner `UID:GID`).
    /// A refused allocation yields a report with `error` and `kind`.
    pub fn start_with(socket: &Path, who: Ident, name: &str, extra: &[&str]) -> Probe {
        let mut child = spawn_retrying(
            Command::new(bin_for_others("bd-probe"))
                .arg(socket)
                .arg(name)
                .args(extra)
                .uid(who.uid)
                .gid(who.gid)
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn bd-probe");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let report =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("probe said {line:?}: {e}"));
        Probe { child, report }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.report["path"].as_str().expect("probe allocated"))
    }

    pub fn id(&self) -> String {
        self.report["id"]
            .as_str()
            .expect("probe allocated")
            .to_owned()
    }

    /// Closes stdin: the probe releases its lease and exits.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.child.stdin.take());
        wait_timeout(&mut self.child, Duration::from_secs(10)).expect("probe exits")
    }
}

impl Drop for Probe {
    /// A probe not finished by its test is killed (its connection closes, so
    /// a live daemon releases its lease): no client outlives its test, not
    /// even one patiently trying to reclaim a lease from a daemon the test
    /// has already stopped.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::os::unix::process::CommandExt;

/// Returns true if and only if something is mounted at or below `dir`.
pub fn unmount_below_exists(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p == prefix || p.starts_with(&format!("{prefix}/")))
}

/// Sets `fs.protected_hardlinks=0` (users may hard-link files they do not
/// own, as on hosts that relax it) until dropped, then restores it.
pub fn allow_unprotected_hardlinks() -> UnprotectedHardlinks {
    let old = std::fs::read_to_string(PROTECTED_HARDLINKS).expect("read protected_hardlinks");
    std::fs::write(PROTECTED_HARDLINKS, "0").expect("write protected_hardlinks");
    UnprotectedHardlinks(old)
}

const PROTECTED_HARDLINKS: &str = "/proc/sys/fs/protected_hardlinks";

/// Restores `fs.protected_hardlinks` on drop.
#[derive(Debug)]
pub struct UnprotectedHardlinks(String);

impl Drop for UnprotectedHardlinks {
    fn drop(&mut self) {
        let _ = std::fs::write(PROTECTED_HARDLINKS, self.0.trim());
    }
}
