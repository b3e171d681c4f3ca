//! The harness's own environment: scratch directories, and cleanup that
//! happens however the run ends (normal exit, error, panic, Ctrl-C).
//!
//! Every process the harness starts and every scratch directory it makes is
//! registered here. Drop guards undo them on the normal and error paths; a
//! signal thread undoes whatever is still registered on SIGINT/SIGTERM/
//! SIGHUP. A run that was killed outright (SIGKILL) leaves its directory
//! behind; the next run finds it (named by a pid that no longer exists) and
//! unmounts and removes it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Remembers a child process to kill if the run is interrupted.
pub fn register_pid(pid: u32) {
    lock(&PIDS).push(pid);
}

/// Forgets a child process (it has been reaped).
pub fn unregister_pid(pid: u32) {
    lock(&PIDS).retain(|p| *p != pid);
}

/// SIGKILLs a child by pid (only ones this harness started).
pub fn kill(pid: u32, signal: Signal) {
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, signal);
    }
}

/// Undoes everything still registered: kills children, unmounts and
/// removes scratch directories. Called from the signal thread.
fn cleanup_all() {
    for pid in lock(&PIDS).drain(..) {
        kill(pid, Signal::KILL);
    }
    // Give the kernel a moment to tear the processes down before unmounting.
    std::thread::sleep(std::time::Duration::from_millis(100));
    for dir in lock(&DIRS).drain(..) {
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Starts the thread that cleans up on SIGINT, SIGTERM or SIGHUP.
pub fn install_signal_cleanup() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("signal runtime")?;
    // Register the handlers now, on this thread, so no signal slips through
    // between here and the thread running.
    let (mut int, mut term, mut hup) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            });
            eprintln!(
                "builddir-bench: interrupted; stopping daemons, unmounting, removing scratch"
            );
            cleanup_all();
            std::process::exit(130);
        })
        .context("signal thread")?;
    Ok(())
}

/// Lazily unmounts every mount at or below `dir`, deepest first, until none
/// is left (a bind mount can be stacked more than once).
pub fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    for _ in 0..8 {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = rustix::mount::unmount(p.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// Makes `path` (and missing parents) a root-owned 0755 directory.
pub fn mkdir_0755(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("mkdir {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

/// This run's scratch directory, `BASE/<pid>`: unmounted and removed on drop.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(base: &Path, keep: bool) -> Result<Scratch> {
        if !base.is_absolute() {
            bail!("--scratch {} must be an absolute path", base.display());
        }
        mkdir_0755(base)?;
        remove_stale(base);
        let dir = base.join(std::process::id().to_string());
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        mkdir_0755(&dir)?;
        lock(&DIRS).push(dir.clone());
        Ok(Scratch { dir, keep })
    }

    /// A fresh 0755 subdirectory.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        mkdir_0755(&p)?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_below(&self.dir);
        lock(&DIRS).retain(|d| d != &self.dir);
        if self.keep {
            eprintln!("kept scratch directory {}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// Removes scratch directories of earlier runs whose process is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        eprintln!(
            "removing stale scratch {} (run {pid} is gone)",
            dir.display()
        );
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Raises the soft fd limit towards `want` (never above the hard limit,
/// which needs CAP_SYS_RESOURCE to raise). Children (the daemon) inherit
/// it. Returns the limit now in force.
pub fn raise_fd_limit(want: u64) -> Result<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let cur = getrlimit(Resource::Nofile);
    let have = cur.current.unwrap_or(u64::MAX);
    let target = cur.maximum.map_or(want, |hard| hard.min(want));
    if have >= target {
        return Ok(have);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: cur.maximum,
        },
    )
    .with_context(|| format!("raising RLIMIT_NOFILE to {target}"))?;
    Ok(target)
}
