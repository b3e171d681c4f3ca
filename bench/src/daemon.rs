//! Running the real `builddird` on a scratch root, and watching it from
//! outside: readiness (`READY=1` on a `NOTIFY_SOCKET` we bind), RSS and fd
//! count from `/proc`, and its trash directory (inotify).

use std::mem::MaybeUninit;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use rustix::process::Signal;

use crate::env::{kill, mkdir_0755, register_pid, unregister_pid};

/// How to run a daemon.
#[derive(Debug, Clone)]
pub struct DaemonOpts {
    pub bin: PathBuf,
    /// `bind` or `tmpfs`.
    pub backing: String,
    /// `--log-level` (the daemon logs every allocation and release at info).
    pub log_level: String,
    /// Contents of its config file.
    pub config: String,
    /// Run under a `NOTIFY_SOCKET` the harness binds (as under systemd
    /// `Type=notify`: readiness by `READY=1`, and with the default
    /// `fd_store = true` every lease's connection goes to the fd store).
    /// Otherwise run as by hand: ready when it answers a handshake.
    pub notify: bool,
}

/// Limits high enough for 10 000 leases, one connection each (a target).
pub const BENCH_CONFIG: &str = "\
# builddir-bench: room for 10 000 leases, one connection each
max_leases = 20000
max_leases_per_uid = 20000
max_connections = 20000
max_connections_per_uid = 20000
";

/// Stops that ended by SIGTERM's default action (no handler installed yet).
pub static SIGTERM_DEATHS: AtomicUsize = AtomicUsize::new(0);

fn libc_sigterm() -> i32 {
    Signal::TERM.as_raw()
}

/// One `builddird` with its own root, socket, log and notify socket.
#[derive(Debug)]
pub struct Daemon {
    opts: DaemonOpts,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    drain: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Daemon {
    /// Starts a daemon in `dir` (created); returns it and the time from
    /// exec to `READY=1`.
    pub fn start(opts: &DaemonOpts, dir: PathBuf) -> Result<(Daemon, Duration)> {
        let root = dir.join("root");
        mkdir_0755(&root)?;
        let mut d = Daemon {
            opts: opts.clone(),
            socket: dir.join("bd.sock"),
            log: dir.join("daemon.log"),
            root,
            dir,
            child: None,
            drain: None,
        };
        let ready = d.spawn()?;
        Ok((d, ready))
    }

    /// Execs the daemon and waits until it is ready (`READY=1`, or its
    /// socket accepting); returns the time it took.
    pub fn spawn(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("daemon already running");
        }
        let config = self.dir.join("config.toml");
        std::fs::write(&config, &self.opts.config).context("writing config")?;
        let notify_path = self.dir.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = if self.opts.notify {
            let n = UnixDatagram::bind(&notify_path).context("binding NOTIFY_SOCKET")?;
            n.set_read_timeout(Some(Duration::from_millis(20)))?;
            Some(n)
        } else {
            None
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("opening daemon log")?;
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--backing")
            .arg(&self.opts.backing)
            .arg("--config")
            .arg(&config)
            .arg("--log-level")
            .arg(&self.opts.log_level)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if notify.is_some() {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("exec {}", self.opts.bin.display()))?;
        register_pid(child.id());
        self.child = Some(child);
        let deadline = started + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        let ready = loop {
            match &notify {
                Some(notify) => match notify.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        if text.lines().any(|l| l == "READY=1") {
                            break started.elapsed();
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e).context("reading NOTIFY_SOCKET"),
                },
                None => {
                    // A completed handshake, not just a connect: the socket is
                    // bound (and accepts into its backlog) before the mount is
                    // made; only the serving loop answers a hello.
                    if self.socket.exists()
                        && builddir_client::blocking::Client::connect(&self.socket)
                            .and_then(|mut c| c.handshake())
                            .is_ok()
                    {
                        break started.elapsed();
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let pid = self.child.take().map(|c| c.id()).unwrap_or(0);
                unregister_pid(pid);
                bail!(
                    "builddird exited before READY=1 ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("builddird not ready after 120 s:\n{}", self.log_tail());
            }
        };
        // Keep reading the notify socket (STATUS= updates, fd-store
        // messages, whose fds the kernel closes) so the daemon's blocking
        // sd_notify sends never find a full queue.
        let Some(notify) = notify else {
            return Ok(ready);
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let _ = notify.set_read_timeout(Some(Duration::from_millis(200)));
            while !flag.load(Ordering::Relaxed) {
                let _ = notify.recv(&mut buf);
            }
        });
        self.drain = Some((stop, handle));
        Ok(ready)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, wait (SIGKILL after 20 s). The mount stays; the scratch
    /// directory's cleanup unmounts it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        kill(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let result = loop {
            if let Some(status) = child.try_wait()? {
                break if status.success() {
                    Ok(())
                } else if status.signal() == Some(libc_sigterm()) {
                    // SIGTERM's default action: it arrived before the daemon
                    // installed its handler. Still a stop; counted.
                    SIGTERM_DEATHS.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("builddird exited with {status} on SIGTERM"))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break Err(anyhow::anyhow!(
                    "builddird did not stop within 20 s of SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        unregister_pid(pid);
        self.stop_drain();
        result
    }

    fn stop_drain(&mut self) {
        if let Some((stop, handle)) = self.drain.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }

    /// `VmRSS` of the daemon, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// Open descriptors of the daemon.
    pub fn fd_count(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Threads of the daemon.
    pub fn threads(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/task", self.pid()))?.count())
    }

    /// Entries in `root/<area>` (`b`, `trash`, `kept`).
    pub fn area_len(&self, area: &str) -> usize {
        std::fs::read_dir(self.root.join(area)).map_or(0, Iterator::count)
    }

    /// Waits until `b/` and `trash/` are both empty (no live lease, nothing
    /// left to reap). Returns how long that took.
    pub fn wait_idle(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if self.area_len("trash") == 0 && self.area_len("b") == 0 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "daemon not idle after {timeout:?}: {} in b/, {} in trash/",
                    self.area_len("b"),
                    self.area_len("trash")
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until `trash/` is empty.
    pub fn wait_trash_empty(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            if self.area_len("trash") == 0 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                bail!(
                    "trash not empty after {timeout:?}: {} entries",
                    self.area_len("trash")
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            unregister_pid(pid);
        }
        self.stop_drain();
    }
}

/// Watches a directory for entries being deleted (inotify `IN_DELETE`).
#[derive(Debug)]
pub struct DeleteWatch {
    fd: std::os::fd::OwnedFd,
}

impl DeleteWatch {
    pub fn new(dir: &Path) -> Result<DeleteWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        inotify::add_watch(&fd, dir, WatchFlags::DELETE)
            .with_context(|| format!("inotify on {}", dir.display()))?;
        Ok(DeleteWatch { fd })
    }

    /// Waits until `name` is deleted from the directory; returns when we
    /// saw it.
    pub fn wait_deleted(&self, name: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
        loop {
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                match reader.next() {
                    Ok(ev) => {
                        if ev.events().contains(ReadFlags::DELETE)
                            && ev
                                .file_name()
                                .is_some_and(|n| n.to_bytes() == name.as_bytes())
                        {
                            return Ok(Instant::now());
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(e) => return Err(e).context("reading inotify"),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{name} was not deleted within {timeout:?}");
            }
            let ts = Timespec {
                tv_sec: left.as_secs().min(1) as i64,
                tv_nsec: if left.as_secs() >= 1 {
                    0
                } else {
                    i64::from(left.subsec_nanos())
                },
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e).context("poll on inotify"),
            }
        }
    }
}

/// Time spent running `cmd` to completion (fork, exec, run, wait).
pub fn time_command(cmd: &mut Command) -> Result<Duration> {
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let elapsed = t0.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(elapsed)
}
