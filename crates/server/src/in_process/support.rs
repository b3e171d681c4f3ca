//! A whole daemon in-process, on a temporary directory of the test's own
//! user: no root, no mount, no systemd.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::conn::peer::Peer;
use crate::host::config::Config;
use crate::host::identity::Accounts;
use crate::host::layout::{Layout, DIR_OPEN};
use crate::host::mount::VerifiedRoot;
use crate::host::policy::Policy;
use crate::lease::table::{Daemon, Phase};

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempRoot {
    pub dir: PathBuf,
}

impl TempRoot {
    pub fn new(tag: &str) -> TempRoot {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "builddird-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).unwrap();
        TempRoot { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("bd.sock")
    }

    /// Names in `root/<area>` (b, kept, trash).
    pub fn names(&self, area: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root().join(area))
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

impl Drop for TempRoot {
    fn drop(&mut self) {
        // Released trees are 0000: make them removable again.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "u+rwx"])
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn me() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// The test's own credentials, as `SO_PEERCRED` would give them.
pub fn my_peer() -> Peer {
    let (uid, gid) = me();
    Peer {
        uid,
        gid,
        pid: std::process::id(),
        command: "seam-test".into(),
        groups: Vec::new(),
    }
}

/// A daemon on `tmp`'s root with `config` (TOML), lease backend `dir`.
pub fn daemon(tmp: &TempRoot, config: &str) -> Arc<Daemon> {
    let mut config = Config::parse(config, Path::new("test.toml")).expect("test config");
    config.root = tmp.root();
    config.socket = tmp.socket();
    let fd = rustix::fs::open(tmp.root(), DIR_OPEN, rustix::fs::Mode::empty()).unwrap();
    let st = rustix::fs::fstat(fd.as_fd()).unwrap();
    let root = VerifiedRoot {
        path: tmp.root(),
        fd,
        mount_id: st.st_dev,
        fstype: "test".into(),
    };
    let layout = Layout::open_owned_by(root, me()).expect("a layout in the temp dir");
    let policy = Policy::from_config(&config, &Accounts::load()).unwrap();
    Arc::new(Daemon::new(config, layout, policy, Backend::Dir))
}

/// Waits (up to 20 s) until `cond` holds.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cond()
}

/// Waits until no tree is being released, removed or deleted.
pub async fn quiet(daemon: &Daemon, tmp: &TempRoot) -> bool {
    eventually(|| {
        daemon
            .table
            .select(|r| {
                matches!(
                    r.phase(),
                    Phase::Releasing { .. }
                        | Phase::Keeping { .. }
                        | Phase::Removing
                        | Phase::Reaping { .. }
                        | Phase::Detaching { .. }
                )
            })
            .is_empty()
            && tmp.names("trash").is_empty()
    })
    .await
}
